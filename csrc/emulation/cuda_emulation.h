// The CUDA execution model on the CPU: what the unmodified csrc/*/*_cuda.cu files need from CUDA C++
// and the CUDA runtime, for a build with the host C++ compiler (-DATTNKERN_CUDA_EMULATION). Tests use
// it to run every kernel on CPU tensors and to check values, shared-memory races (ThreadSanitizer
// build) and out-of-bounds accesses (AddressSanitizer build). It says nothing about speed.
//
// The model (runtime/cuda_emulation.cpp and the schedulers of schedulers.h run it):
//   - A launch runs its blocks one after another, in an order chosen by the configuration (forward,
//     reverse or shuffled), and returns when the last block is done; launches are serialised.
//   - Every CUDA thread of a block runs as an OS thread of a pool, or as a fiber on the launching thread
//     (schedulers.h; the sanitized builds use OS threads); __syncthreads() is a barrier across the
//     block's threads still running. A thread that passes a different number of barriers than the
//     others of its block is an error (CUDA leaves that undefined).
//   - Static __shared__ arrays are function-local statics: one copy per kernel, used by one block at a
//     time (launches are serialised), holding whatever the previous block left, as on a GPU.
//     Dynamic shared memory is a heap buffer of exactly the requested size per launch, filled with
//     0xFF bytes (NaN in every floating type) before each block, so reading an unwritten element
//     shows up as NaN and reading past the end as a heap overflow under AddressSanitizer.
//   - A launch is checked as the device checks it: grid and block limits, at most 48 KiB of dynamic
//     shared memory unless cudaFuncSetAttribute allowed more, and never more than the target's opt-in
//     limit. Device attributes are those of a selectable target (sm_80, sm_86, sm_90).
//   - The warp collectives (__shfl_*_sync, __syncwarp, and the tensor-core instructions mma.sync and
//     ldmatrix through common/warp_mma.cuh) are barriers over the 32 lanes of a warp (warp w: linear
//     thread indices 32w … 32w + 31) at which the lanes exchange values, with the fragment layouts of the
//     PTX ISA. Only full-warp masks: every lane of the warp takes part, as .aligned requires; a lane that
//     is missing is an error. They order memory between the warp's lanes as __syncwarp does.
//   - Streams, device guards and launch-error checks are no-ops: a bad launch throws at once.
//
// The three constructs of CUDA C++ that a macro cannot turn into C++ — the <<<...>>> launch, `extern
// __shared__` and the CUDA dispatch key of TORCH_LIBRARY_IMPL — are written in the .cu files as the
// macros of common/cuda_utils.cuh, which expand to the real thing under nvcc and to this runtime here.
#pragma once

#if defined(__CUDACC__) || !defined(ATTNKERN_CUDA_EMULATION)
#error "cuda_emulation.h is for the emulated build (the host compiler, -DATTNKERN_CUDA_EMULATION) only"
#endif

#include <c10/util/Exception.h>

#include <math.h>  // CUDA's float overloads of exp, log, sqrt, ... in the global namespace (via <math.h>)

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

// ---- CUDA C++ qualifiers and built-in types ------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)  // nvcc's register budget: nothing to emulate
#define __shared__ static  // one copy per kernel instantiation; blocks run one at a time
// __restrict__ is a GCC/Clang keyword already.

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

// The built-in variables, per OS thread (each emulated CUDA thread is one).
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

void __syncthreads();

constexpr int warpSize = 32;

// CUDA's max/min: for floating point they are fmax/fmin (a NaN operand is ignored), for integers the
// usual comparison.
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }

// ---- the CUDA runtime API subset the kernels' host code uses ---------------------------------------

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
};
using cudaError = cudaError_t;

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);

namespace attnkern {
namespace emulation {
cudaError_t set_function_attribute(const void* function, cudaFuncAttribute attr, int value);
}  // namespace emulation
}  // namespace attnkern

template <typename T>
cudaError_t cudaFuncSetAttribute(T* function, cudaFuncAttribute attr, int value) {
  return attnkern::emulation::set_function_attribute(reinterpret_cast<const void*>(function), attr, value);
}

namespace attnkern {
namespace emulation {

// ---- configuration ---------------------------------------------------------------------------------

enum class BlockOrder { kForward, kReverse, kShuffled };

// The device a launch is checked against.
struct Target {
  const char* name;          // "sm_90"
  int major, minor;
  int multiprocessors;
  int smem_optin_bytes;      // cudaDevAttrMaxSharedMemoryPerBlockOptin
};

struct Config {
  BlockOrder order = BlockOrder::kForward;
  uint64_t seed = 0;                // of the shuffled order (each launch draws from seed and its number)
  const Target* target = nullptr;
  int64_t grid_stride_block_cap = 0;  // > 0: element_blocks() launches at most this many blocks
  int multiprocessors = 0;            // > 0: the SM count the device reports instead of the target's
  bool fibers = true;                 // the scheduler (schedulers.h): fibers, or OS threads
};

// The current configuration (initialised from ATTNKERN_EMULATION_* environment variables; see
// cuda_emulation.cpp), and a setter for each field by name: returns an empty string or the error.
Config config();
std::string configure(const std::string& key, const std::string& value);

// What element_blocks() launches at most: `cap` (the device's value) unless a test lowered it.
int64_t grid_stride_block_cap(int64_t cap);

// ---- launches ------------------------------------------------------------------------------------

struct LaunchShape {
  dim3 grid, block;
  size_t smem_bytes;
};

// Runs body() on every thread of every block (each thread's built-in variables set), after checking
// the launch against the target. `function` identifies the kernel (for cudaFuncSetAttribute), `name`
// and `signature` record it in the launch log. Throws c10::Error on a bad launch or a barrier mismatch.
void run_launch(const void* function, const char* name, const char* file, const std::string& signature,
                const LaunchShape& shape, const std::function<void()>& body);

// The dynamic shared memory of the running block (ATTNKERN_DYNAMIC_SHARED).
unsigned char* dynamic_shared_memory_base();

// A vector copy of `bytes` (copy_chunk): dst and src must be aligned to it, or a GPU faults ("misaligned
// address"); throws c10::Error.
void check_vector_copy(const void* dst, const void* src, int bytes);

template <typename T>
T* dynamic_shared_memory() {
  return reinterpret_cast<T*>(dynamic_shared_memory_base());
}

// One launch dimension given as an integer or a dim3: integers are checked before they are narrowed
// to unsigned int (nvcc would truncate silently).
template <typename D>
dim3 launch_dim(const D& value, const char* what, const char* name) {
  if constexpr (std::is_integral_v<D>) {
    TORCH_CHECK(value >= 1 && static_cast<uint64_t>(value) <= std::numeric_limits<unsigned int>::max(),
                "emulated CUDA launch of ", name, ": ", what, " = ", value, " does not fit a launch dimension");
    return dim3(static_cast<unsigned int>(value));
  } else {
    return dim3(value);
  }
}

template <typename Kernel>
std::string kernel_signature() {
  return typeid(Kernel).name();
}

// What ATTNKERN_LAUNCH(grid, block, smem, stream, kernel) expands to: a callable that runs `kernel`
// with the arguments it is given, every thread with its own copies of them (as CUDA passes them).
template <typename... Params>
class Launch {
 public:
  using Kernel = void (*)(Params...);

  template <typename G, typename B, typename S>
  Launch(Kernel kernel, const char* name, const char* file, const G& grid, const B& block, const S& smem_bytes,
         cudaStream_t /*stream: launches are synchronous*/)
      : kernel_(kernel), name_(name), file_(file) {
    shape_.grid = launch_dim(grid, "the grid size", name);
    shape_.block = launch_dim(block, "the block size", name);
    if constexpr (std::is_signed_v<S>) {
      TORCH_CHECK(smem_bytes >= 0, "emulated CUDA launch of ", name, ": negative dynamic shared memory ", smem_bytes);
    }
    shape_.smem_bytes = static_cast<size_t>(smem_bytes);
  }

  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "kernel launched with the wrong number of arguments");
    const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    const Kernel kernel = kernel_;
    run_launch(reinterpret_cast<const void*>(kernel), name_, file_, kernel_signature<Kernel>(), shape_,
               [&params, kernel] { std::apply(kernel, params); });  // by value: each thread its own copies
  }

 private:
  Kernel kernel_;
  const char* name_;
  const char* file_;
  LaunchShape shape_;
};

template <typename... Params, typename G, typename B, typename S>
Launch<Params...> make_launch(void (*kernel)(Params...), const char* name, const char* file, const G& grid,
                              const B& block, const S& smem_bytes, cudaStream_t stream) {
  return Launch<Params...>(kernel, name, file, grid, block, smem_bytes, stream);
}

}  // namespace emulation
}  // namespace attnkern

// ---- warp collectives --------------------------------------------------------------------------------

namespace attnkern {
namespace emulation {

constexpr size_t kWarpSlotBytes = 32;  // per lane: the largest value a collective exchanges (an mma's A and B)

// The calling thread's lane (its linear index in the block, modulo 32).
int lane_id();

// Writes `size` bytes of `mine` into the calling lane's slot and waits for the whole warp (checking
// `mask` is the full warp); returns the warp's 32 slots. The slots stay valid until warp_exchange_end(),
// which every lane calls once it has read what it needs (a second warp barrier).
const unsigned char* warp_exchange_begin(const void* mine, size_t size, unsigned mask, const char* what);
void warp_exchange_end();

// mma.sync.aligned.m16n8k16.row.col.f32.<elem>.<elem>.f32: d = a·b + c over the warp, each lane holding
// its fragments as the PTX ISA lays them out (a: 4 registers of 2 elements, b: 2, c and d: 4 floats).
enum class MmaElement { kHalf, kBFloat16 };
void mma_m16n8k16(MmaElement elem, float* d, const uint32_t* a, const uint32_t* b, const float* c);

// ldmatrix.sync.aligned.m8n8.x<count>[.trans].shared.b16: lanes 8m … 8m + 7 give the addresses of the
// 8 rows (16 bytes each) of matrix m; returns those rows' addresses to every lane (rows[8m + r]).
void ldmatrix_rows(int count, const void* row_address, const unsigned char** rows);

}  // namespace emulation
}  // namespace attnkern

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  attnkern::emulation::warp_exchange_begin(nullptr, 0, mask, "__syncwarp");
  attnkern::emulation::warp_exchange_end();
}

// __shfl_sync and __shfl_xor_sync for 32- and 64-bit values (width: a power of two ≤ 32 splitting the warp
// into independent segments, as in CUDA).
template <typename T>
T emulated_shuffle(unsigned mask, T value, int lane_mask_or_source, int width, bool xor_lanes, const char* what) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= attnkern::emulation::kWarpSlotBytes,
                "a shuffled value must be a plain value of at most 32 bytes");
  TORCH_CHECK(width >= 1 && width <= 32 && (width & (width - 1)) == 0, what, ": width ", width,
              " is not a power of two in [1, 32]");
  const int lane = attnkern::emulation::lane_id();
  const int segment = lane & ~(width - 1);
  int source = xor_lanes ? lane ^ lane_mask_or_source : segment + (lane_mask_or_source & (width - 1));
  if (source >= segment + width) source = lane;  // __shfl_xor_sync past the segment: the lane's own value
  const unsigned char* slots = attnkern::emulation::warp_exchange_begin(&value, sizeof(T), mask, what);
  T result;
  std::memcpy(&result, slots + source * attnkern::emulation::kWarpSlotBytes, sizeof(T));
  attnkern::emulation::warp_exchange_end();
  return result;
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  return emulated_shuffle(mask, value, lane_mask, width, true, "__shfl_xor_sync");
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane, int width = 32) {
  return emulated_shuffle(mask, value, source_lane, width, false, "__shfl_sync");
}
