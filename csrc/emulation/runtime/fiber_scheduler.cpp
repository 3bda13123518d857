// The "fibers" scheduler of the emulated device (schedulers.h): the CUDA threads of a block are
// user-level contexts (ucontext) on the launching OS thread. The launching thread runs the block in
// barrier intervals: it switches to each thread still running, which runs until it reaches
// __syncthreads (and switches back) or returns; when all have, the barrier opens and the next interval
// starts. The threads of an interval run in forward, reverse or shuffled order (following the block
// order), so kernels that depend on the order of threads between barriers give different values.
// Warp barriers open within an interval: when a pass leaves all 32 lanes of a warp waiting at one, they
// run on in the next pass. When nothing can run but some lanes wait in a warp collective, the block is
// stuck: every waiting thread is resumed to throw, and the launch reports the stuck warp.
//
// Not under a sanitizer: AddressSanitizer and ThreadSanitizer would need every switch annotated; the
// sanitized builds use the "threads" scheduler (fibers_available() is false there).
// Compiled only into the emulated library (tools/cuda_emulation.py defines ATTNKERN_CUDA_EMULATION): in
// any other build this file is empty, so a glob over the sources cannot link the emulator into attnkern._C.
#if defined(ATTNKERN_CUDA_EMULATION)

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <memory>
#include <numeric>
#include <random>

#include "emulation/schedulers.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || defined(ATTNKERN_EMULATION_TSAN)
#define ATTNKERN_EMULATION_NO_FIBERS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ATTNKERN_EMULATION_NO_FIBERS 1
#endif
#endif

namespace attnkern {
namespace emulation {

#if defined(ATTNKERN_EMULATION_NO_FIBERS)

bool fibers_available() { return false; }
std::string run_on_fibers(const LaunchRun&) {
  TORCH_CHECK(false, "CUDA emulation: the fibers scheduler is not available in a sanitized build");
}

#else

bool fibers_available() { return true; }

namespace {

constexpr size_t kFiberStack = size_t(256) << 10;

class Fibers final : public ThreadHooks {
 public:
  ~Fibers() {
    for (auto& f : fibers_) munmap(f->mapping, f->mapping_size);
  }

  std::string run(const LaunchRun& launch) {
    const int threads = static_cast<int>(launch.block.x * launch.block.y * launch.block.z);
    grow(threads);
    const SharedMemory smem = allocate_shared_memory(launch.smem_bytes);
    ThreadHooks* const saved_hooks = t_hooks;
    unsigned char* const saved_smem = t_smem;
    t_hooks = this;
    t_smem = smem.get();
    launch_ = &launch;
    aborting_ = false;
    warp_slots_.assign(size_t(threads) * kWarpSlotBytes, 0);
    blockDim = launch.block;
    gridDim = launch.grid;
    std::mt19937_64 rng(launch.seed);
    std::vector<int> order(threads);
    std::vector<int64_t> barriers(threads);
    std::string failure;
    for (uint64_t i = 0; i < launch.total_blocks && failure.empty() && !error_ && !aborting_; ++i) {
      blockIdx = block_index(launch.linear_block(i), launch.grid);
      std::memset(smem.get(), 0xFF, launch.smem_bytes);  // NaN in every floating type
      for (int t = 0; t < threads; ++t) {
        fibers_[t]->state = State::kRunning;
        fibers_[t]->barriers = 0;
      }
      int live = threads;
      while (live > 0 && !aborting_) {  // one barrier interval
        for (bool warp_opened = true; warp_opened;) {  // passes: each runs every thread until it waits
          std::iota(order.begin(), order.end(), 0);
          if (!launch.shuffled.empty()) std::shuffle(order.begin(), order.end(), rng);
          else if (launch.reverse) std::reverse(order.begin(), order.end());
          for (int t : order) {
            Fiber& f = *fibers_[t];
            if (f.state != State::kRunning) continue;
            current_ = t;
            threadIdx = thread_index(t, launch.block);
            swapcontext(&scheduler_, &f.context);
            if (f.state == State::kDone) --live;
          }
          warp_opened = open_warps(threads);
        }
        if (const std::string stuck = stuck_warp(launch, threads); !stuck.empty()) {
          abort_waiting(threads, stuck);  // unwinds every waiting thread
          live = 0;
        }
        for (int t = 0; t < threads; ++t) {
          if (fibers_[t]->state == State::kAtBarrier) fibers_[t]->state = State::kRunning;
        }
      }
      for (int t = 0; t < threads; ++t) barriers[t] = fibers_[t]->barriers;
      if (!error_) failure = barrier_mismatch(launch.name, blockIdx, barriers);
    }
    launch_ = nullptr;
    t_hooks = saved_hooks;
    t_smem = saved_smem;
    std::exception_ptr error = error_;
    error_ = nullptr;
    if (error) std::rethrow_exception(error);
    return failure;
  }

  void sync_threads() override {
    Fiber& f = *fibers_[current_];
    ++f.barriers;
    f.state = State::kAtBarrier;
    swapcontext(&f.context, &scheduler_);
    if (aborting_) throw_abort();
  }

  unsigned char* sync_warp() override {
    const int warp = current_ / kWarpSize;
    TORCH_CHECK(full_warp(warp), "emulated CUDA kernel ", launch_->name, ": a warp collective in warp ", warp,
                ", which has fewer than 32 threads (the block's last warp is partial)");
    Fiber& f = *fibers_[current_];
    f.state = State::kAtWarpBarrier;
    swapcontext(&f.context, &scheduler_);
    if (aborting_) throw_abort();
    return warp_slots_.data() + size_t(warp) * kWarpSize * kWarpSlotBytes;
  }

  unsigned char* warp_slot() override { return warp_slots_.data() + size_t(current_) * kWarpSlotBytes; }

 private:
  enum class State { kRunning, kAtBarrier, kAtWarpBarrier, kDone };
  struct Fiber {
    ucontext_t context;
    void* mapping = nullptr;
    size_t mapping_size = 0;
    State state = State::kDone;
    int64_t barriers = 0;
  };

  void grow(int threads) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    while (static_cast<int>(fibers_.size()) < threads) {
      auto f = std::make_unique<Fiber>();
      f->mapping_size = kFiberStack + page;
      f->mapping = mmap(nullptr, f->mapping_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
      TORCH_CHECK(f->mapping != MAP_FAILED, "CUDA emulation: could not map a fiber stack");
      mprotect(f->mapping, page, PROT_NONE);  // a guard page below the stack: an overflow faults
      getcontext(&f->context);
      f->context.uc_stack.ss_sp = static_cast<char*>(f->mapping) + page;
      f->context.uc_stack.ss_size = kFiberStack;
      f->context.uc_link = nullptr;  // fibers never return: they loop in fiber_main
      makecontext(&f->context, reinterpret_cast<void (*)()>(&Fibers::entry), 1, static_cast<int>(fibers_.size()));
      fibers_.push_back(std::move(f));
    }
  }

  static void entry(int index);

  bool full_warp(int warp) const {
    const int threads = static_cast<int>(launch_->block.x * launch_->block.y * launch_->block.z);
    return (warp + 1) * kWarpSize <= threads;
  }

  // Lets every warp whose lanes all wait at a warp barrier through it; whether any was.
  bool open_warps(int threads) {
    bool opened = false;
    for (int first = 0; first + kWarpSize <= threads; first += kWarpSize) {
      bool all = true;
      for (int t = first; t < first + kWarpSize && all; ++t) all = fibers_[t]->state == State::kAtWarpBarrier;
      if (!all) continue;
      for (int t = first; t < first + kWarpSize; ++t) fibers_[t]->state = State::kRunning;
      opened = true;
    }
    return opened;
  }

  // When no thread can run: the first warp some of whose lanes wait in a collective that others never reach.
  std::string stuck_warp(const LaunchRun& launch, int threads) const {
    for (int t = 0; t < threads; ++t) {
      if (fibers_[t]->state != State::kAtWarpBarrier) continue;
      const int warp = t / kWarpSize;
      bool exited = false;
      for (int u = warp * kWarpSize; u < (warp + 1) * kWarpSize; ++u) exited |= fibers_[u]->state == State::kDone;
      return warp_deadlock(launch.name, blockIdx, warp,
                           exited ? "returned from the kernel" : "wait at __syncthreads() instead");
    }
    return "";
  }

  // Resumes every waiting thread with aborting_ set: each throws from its barrier and unwinds its stack.
  void abort_waiting(int threads, const std::string& why) {
    aborting_ = true;
    abort_message_ = why;
    for (int t = 0; t < threads; ++t) {
      Fiber& f = *fibers_[t];
      if (f.state == State::kDone) continue;
      current_ = t;
      threadIdx = thread_index(t, launch_->block);
      swapcontext(&scheduler_, &f.context);
    }
  }

  [[noreturn]] void throw_abort() { TORCH_CHECK(false, abort_message_); }

  // Runs the current launch's kernel, once per block, for ever (the launching thread switches here).
  [[noreturn]] void fiber_main(int index) {
    for (;;) {
      try {
        (*launch_->body)();
      } catch (...) {
        if (!error_) error_ = std::current_exception();
      }
      fibers_[index]->state = State::kDone;
      swapcontext(&fibers_[index]->context, &scheduler_);
    }
  }

  ucontext_t scheduler_;
  std::vector<std::unique_ptr<Fiber>> fibers_;
  const LaunchRun* launch_ = nullptr;
  int current_ = 0;
  std::exception_ptr error_;
  std::vector<unsigned char> warp_slots_;  // the running block's warp exchange slots
  bool aborting_ = false;
  std::string abort_message_;
};

// One set of fibers per launching thread: a fiber is only ever resumed on the thread that made it.
thread_local std::unique_ptr<Fibers> t_fibers;

void Fibers::entry(int index) { t_fibers->fiber_main(index); }

}  // namespace

std::string run_on_fibers(const LaunchRun& launch) {
  if (!t_fibers) t_fibers = std::make_unique<Fibers>();
  return t_fibers->run(launch);
}

#endif

}  // namespace emulation
}  // namespace attnkern

#endif  // ATTNKERN_CUDA_EMULATION
