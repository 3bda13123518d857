// How the emulated device runs the blocks of one launch (internal to csrc/emulation). Two schedulers,
// with the same semantics — every thread of a block runs until it reaches a barrier or returns, and the
// barrier opens when every thread still running has reached it:
//   threads  every CUDA thread is an OS thread (a pool kept across launches). Needed by the sanitized
//            builds: ThreadSanitizer sees real threads and real locks; the default there.
//   fibers   every CUDA thread is a user-level context (ucontext) on the launching thread, switched at
//            each barrier, in an order set by the block order (forward, reverse or shuffled per
//            barrier interval). About 15× faster; the default of the plain build.
// Both also run warp barriers (sync_warp: the 32 lanes of one warp), on which the warp collectives of
// cuda_emulation.h (__shfl_*_sync, __syncwarp, mma.sync, ldmatrix) exchange their lanes' values. Every
// lane of a warp must reach the same collective: a lane that returns, or waits at __syncthreads, while
// the others of its warp wait in a collective leaves the block unable to go on; both schedulers report
// that as an error (on a GPU it is undefined, or hangs).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "emulation/cuda_emulation.h"

namespace attnkern {
namespace emulation {

struct LaunchRun {
  const std::function<void()>* body;  // runs the kernel on the calling CUDA thread
  dim3 grid, block;
  size_t smem_bytes;
  const char* name;
  uint64_t total_blocks;
  std::vector<uint64_t> shuffled;  // the linear block indices in order when shuffled, else empty
  bool reverse;                    // run the blocks (and, on fibers, the threads) last to first
  uint64_t seed;                   // of the fibers' shuffled thread order
  // The block at position i of the launch's order (x fastest).
  uint64_t linear_block(uint64_t i) const {
    return !shuffled.empty() ? shuffled[i] : reverse ? total_blocks - 1 - i : i;
  }
};

// Run every block of the launch; return "" or the error found (threads of a block passing different
// numbers of barriers). An exception thrown on a CUDA thread is rethrown.
std::string run_on_threads(const LaunchRun& launch);
std::string run_on_fibers(const LaunchRun& launch);

// Whether fibers are available in this build (not under a sanitizer).
bool fibers_available();

// What the running CUDA thread calls: each scheduler sets these on the OS threads that run CUDA threads.
struct ThreadHooks {
  virtual void sync_threads() = 0;
  // Waits until every lane of the calling thread's warp has called it; returns the warp's exchange slots
  // (kWarpSlotBytes per lane, lane-major), which hold what each lane wrote into its own slot before.
  virtual unsigned char* sync_warp() = 0;
  // The calling thread's own exchange slot (of the running block).
  virtual unsigned char* warp_slot() = 0;

 protected:
  ~ThreadHooks() = default;
};
extern thread_local ThreadHooks* t_hooks;   // null outside a kernel
extern thread_local unsigned char* t_smem;  // the running block's dynamic shared memory

// A block's dynamic shared memory: exactly `bytes` (so that AddressSanitizer reports an overrun), 16-byte
// aligned as on a GPU (copy_chunk checks the alignment of vector copies).
struct SharedMemoryDeleter {
  void operator()(unsigned char* p) const;
};
using SharedMemory = std::unique_ptr<unsigned char[], SharedMemoryDeleter>;
SharedMemory allocate_shared_memory(size_t bytes);

// Shared by both schedulers.
constexpr int kWarpSize = 32;
int linear_thread(const uint3& thread, const dim3& block);
std::string warp_deadlock(const char* name, const uint3& block, int warp, const char* why);
uint3 block_index(uint64_t linear, const dim3& grid);
uint3 thread_index(int linear, const dim3& block);
std::string barrier_mismatch(const char* name, const uint3& block, const std::vector<int64_t>& barriers);

}  // namespace emulation
}  // namespace attnkern
