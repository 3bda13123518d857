// The "threads" scheduler of the emulated device (schedulers.h): every CUDA thread of a block is an OS
// thread. The pool holds one thread per CUDA thread of the largest block launched so far and keeps them
// across launches. The launching thread runs one block at a time: it wakes the block's threads and waits
// until all have returned from the kernel; they meet at __syncthreads on a barrier over the threads still
// running. All synchronisation is a mutex and condition variables, which ThreadSanitizer understands:
// accesses of two threads between the same two barriers stay unordered, so it reports them as a race.
// Compiled only into the emulated library (tools/cuda_emulation.py defines ATTNKERN_CUDA_EMULATION): in
// any other build this file is empty, so a glob over the sources cannot link the emulator into attnkern._C.
#if defined(ATTNKERN_CUDA_EMULATION)

#include <pthread.h>

#include <condition_variable>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>

#include "emulation/schedulers.h"

namespace attnkern {
namespace emulation {
namespace {

constexpr size_t kWorkerStack = size_t(4) << 20;

class Pool final : public ThreadHooks {
 public:
  static Pool& instance() {
    static Pool* pool = new Pool;  // never destroyed: its threads sleep through static destruction
    return *pool;
  }

  std::string run(const LaunchRun& launch) {
    const int threads = static_cast<int>(launch.block.x * launch.block.y * launch.block.z);
    grow(threads);
    // Exactly the requested size (zero bytes too), so that AddressSanitizer reports an overrun.
    std::unique_ptr<unsigned char[]> smem(new unsigned char[launch.smem_bytes]);
    std::unique_lock<std::mutex> lock(mu_);
    body_ = launch.body;
    grid_ = launch.grid;
    block_ = launch.block;
    smem_ = smem.get();
    active_ = threads;
    barriers_.assign(threads, 0);
    error_ = nullptr;
    std::string failure;
    for (uint64_t i = 0; i < launch.total_blocks && failure.empty(); ++i) {
      block_idx_ = block_index(launch.linear_block(i), grid_);
      std::memset(smem_, 0xFF, launch.smem_bytes);  // NaN in every floating type
      live_ = threads;
      arrived_ = 0;
      finished_ = 0;
      ++block_seq_;
      for (int t = 0; t < threads; ++t) workers_[t]->wake.notify_one();
      done_.wait(lock, [&] { return finished_ == active_; });
      if (error_) break;
      failure = barrier_mismatch(launch.name, block_idx_, barriers_);
    }
    active_ = 0;
    body_ = nullptr;
    smem_ = nullptr;
    std::exception_ptr error = error_;
    error_ = nullptr;
    lock.unlock();
    if (error) std::rethrow_exception(error);
    return failure;
  }

  void sync_threads() override {
    ++barriers_passed_;
    std::unique_lock<std::mutex> lock(mu_);
    if (++arrived_ == live_) {
      release_barrier();
      return;
    }
    const uint64_t generation = barrier_generation_;
    barrier_.wait(lock, [&] { return barrier_generation_ != generation; });
  }

 private:
  struct Worker {
    std::condition_variable wake;
  };
  struct Start {
    Pool* pool;
    int index;
    uint64_t seen;  // the block sequence number at creation: the thread runs the blocks after it
  };

  void release_barrier() {  // under mu_
    arrived_ = 0;
    ++barrier_generation_;
    barrier_.notify_all();
  }

  void grow(int threads) {
    std::unique_lock<std::mutex> lock(mu_);
    while (static_cast<int>(workers_.size()) < threads) {
      const int index = static_cast<int>(workers_.size());
      workers_.push_back(std::make_unique<Worker>());
      auto* start = new Start{this, index, block_seq_};
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setstacksize(&attr, kWorkerStack);
      pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
      pthread_t thread;
      const int rc = pthread_create(&thread, &attr, &Pool::start, start);
      pthread_attr_destroy(&attr);
      if (rc != 0) {
        delete start;
        workers_.pop_back();
        TORCH_CHECK(false, "CUDA emulation: could not start thread ", index, " (", std::strerror(rc), ")");
      }
    }
  }

  static void* start(void* arg) {
    const Start s = *static_cast<Start*>(arg);
    delete static_cast<Start*>(arg);
    s.pool->work(s.index, s.seen);
    return nullptr;
  }

  void work(int index, uint64_t seen) {
    t_hooks = this;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      workers_[index]->wake.wait(lock, [&] { return block_seq_ != seen && index < active_; });
      seen = block_seq_;
      threadIdx = thread_index(index, block_);
      blockIdx = block_idx_;
      blockDim = block_;
      gridDim = grid_;
      t_smem = smem_;
      const std::function<void()>* body = body_;
      lock.unlock();
      barriers_passed_ = 0;
      std::exception_ptr error;
      try {
        (*body)();
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      if (error && !error_) error_ = error;
      barriers_[index] = barriers_passed_;
      if (--live_ > 0 && arrived_ == live_) release_barrier();  // the others wait for no one else
      if (++finished_ == active_) done_.notify_one();
    }
  }

  static thread_local int64_t barriers_passed_;  // by the calling CUDA thread, in its block

  std::mutex mu_;
  std::condition_variable done_, barrier_;
  std::vector<std::unique_ptr<Worker>> workers_;
  // The launch and block being run (under mu_).
  const std::function<void()>* body_ = nullptr;
  dim3 grid_, block_;
  uint3 block_idx_{0, 0, 0};
  unsigned char* smem_ = nullptr;
  uint64_t block_seq_ = 0;
  int active_ = 0, live_ = 0, arrived_ = 0, finished_ = 0;
  uint64_t barrier_generation_ = 0;
  std::vector<int64_t> barriers_;
  std::exception_ptr error_;
};

thread_local int64_t Pool::barriers_passed_ = 0;

}  // namespace

std::string run_on_threads(const LaunchRun& launch) { return Pool::instance().run(launch); }

}  // namespace emulation
}  // namespace attnkern

#endif  // ATTNKERN_CUDA_EMULATION
