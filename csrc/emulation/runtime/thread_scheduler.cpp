// The "threads" scheduler of the emulated device (schedulers.h): every CUDA thread of a block is an OS
// thread. The pool holds one thread per CUDA thread of the largest block launched so far and keeps them
// across launches. The launching thread runs one block at a time: it wakes the block's threads and waits
// until all have returned from the kernel; they meet at __syncthreads on a barrier over the threads still
// running (a mutex and condition variables).
//
// Under ThreadSanitizer (the tsan build compiles this file uninstrumented, with ATTNKERN_EMULATION_TSAN)
// that mutex must not order anything: a thread that reaches the barrier first and one that wakes late
// would otherwise be ordered through it, and a race between them would go unseen whenever the scheduling
// happened to serialise them. So every lock and wait runs with TSan's synchronisation ignored, and the
// pool declares exactly the orderings CUDA guarantees, with __tsan_release/__tsan_acquire:
//   launching thread before the block  -> every thread of the block       (start_sync_)
//   every thread before barrier k      -> every thread after barrier k    (barrier_sync_[k % 2])
//   every thread of the block          -> launching thread after it       (end_sync_)
//   every lane before warp barrier k   -> every lane after it             (warp_sync_[warp][k % 2])
// Two barrier objects suffice: no thread reaches barrier k + 1 before all have passed barrier k.
// A thread that starts to wait when every other thread still running waits too, and no barrier can open
// (some lanes wait in a warp collective that others never reach), wakes them all to throw the error.
//
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

#if defined(ATTNKERN_EMULATION_TSAN)
extern "C" {
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
}
#endif

namespace attnkern {
namespace emulation {
namespace {

constexpr size_t kWorkerStack = size_t(4) << 20;

// A happens-before edge from every release of `sync` to every later acquire of it (TSan only).
inline void release(void* sync) {
#if defined(ATTNKERN_EMULATION_TSAN)
  __tsan_release(sync);
#else
  (void)sync;
#endif
}

inline void acquire(void* sync) {
#if defined(ATTNKERN_EMULATION_TSAN)
  __tsan_acquire(sync);
#else
  (void)sync;
#endif
}

// While alive, the calling thread's locks and waits order nothing for TSan. Declare it before the lock it
// covers, so that the unlock happens inside it too.
struct IgnoreSync {
#if defined(ATTNKERN_EMULATION_TSAN)
  IgnoreSync() { AnnotateIgnoreSyncBegin(__FILE__, __LINE__); }
  ~IgnoreSync() { AnnotateIgnoreSyncEnd(__FILE__, __LINE__); }
#else
  IgnoreSync() {}
  ~IgnoreSync() {}
#endif
  IgnoreSync(const IgnoreSync&) = delete;
  IgnoreSync& operator=(const IgnoreSync&) = delete;
};

class Pool final : public ThreadHooks {
 public:
  static Pool& instance() {
    static Pool* pool = new Pool;  // never destroyed: its threads sleep through static destruction
    return *pool;
  }

  std::string run(const LaunchRun& launch) {
    const int threads = static_cast<int>(launch.block.x * launch.block.y * launch.block.z);
    grow(threads);
    const SharedMemory smem = allocate_shared_memory(launch.smem_bytes);
    {
      IgnoreSync ignore;
      std::lock_guard<std::mutex> lock(mu_);
      body_ = launch.body;
      name_ = launch.name;
      grid_ = launch.grid;
      block_ = launch.block;
      smem_ = smem.get();
      active_ = threads;
      barriers_.assign(threads, 0);
      error_ = nullptr;
      warp_slots_.assign(size_t(threads) * kWarpSlotBytes, 0);
      warp_arrived_.assign(ceil_warps(threads), 0);
      warp_generation_.assign(ceil_warps(threads), 0);
    }
    std::string failure;
    bool error = false;
    for (uint64_t i = 0; i < launch.total_blocks && failure.empty() && !error; ++i) {
      std::memset(smem.get(), 0xFF, launch.smem_bytes);  // NaN in every floating type
      release(&start_sync_);
      {
        IgnoreSync ignore;
        std::unique_lock<std::mutex> lock(mu_);
        block_idx_ = block_index(launch.linear_block(i), grid_);
        live_ = threads;
        arrived_ = 0;
        finished_ = 0;
        waiting_ = 0;
        stuck_ = false;
        ++block_seq_;
        for (int t = 0; t < threads; ++t) workers_[t]->wake.notify_one();
        done_.wait(lock, [&] { return finished_ == active_; });
        error = static_cast<bool>(error_);
        if (!error) failure = barrier_mismatch(launch.name, block_idx_, barriers_);
      }
      acquire(&end_sync_);
    }
    std::exception_ptr thrown;
    {
      IgnoreSync ignore;
      std::lock_guard<std::mutex> lock(mu_);
      active_ = 0;
      body_ = nullptr;
      smem_ = nullptr;
      thrown = error_;
      error_ = nullptr;
    }
    if (thrown) std::rethrow_exception(thrown);
    return failure;
  }

  void sync_threads() override {
    const int64_t k = barriers_passed_++;
    release(&barrier_sync_[k % 2]);
    {
      IgnoreSync ignore;
      std::unique_lock<std::mutex> lock(mu_);
      if (++arrived_ == live_) {
        release_barrier(arrived_ - 1);
      } else {
        const uint64_t generation = barrier_generation_;
        start_waiting();
        barrier_.wait(lock, [&] { return barrier_generation_ != generation || stuck_; });
        if (barrier_generation_ == generation) throw_stuck();
      }
    }
    acquire(&barrier_sync_[k % 2]);
  }

  unsigned char* sync_warp() override {
    const int warp = t_index_ / kWarpSize;
    TORCH_CHECK((warp + 1) * kWarpSize <= active_, "emulated CUDA kernel: a warp collective in warp ", warp,
                ", which has fewer than 32 threads (the block's last warp is partial)");
    const int64_t k = warp_barriers_passed_++;
    release(&warp_sync_[warp][k % 2]);
    {
      IgnoreSync ignore;
      std::unique_lock<std::mutex> lock(mu_);
      if (++warp_arrived_[warp] == kWarpSize) {
        warp_arrived_[warp] = 0;
        ++warp_generation_[warp];
        waiting_ -= kWarpSize - 1;
        warp_barrier_.notify_all();
      } else {
        const uint64_t generation = warp_generation_[warp];
        start_waiting();
        warp_barrier_.wait(lock, [&] { return warp_generation_[warp] != generation || stuck_; });
        if (warp_generation_[warp] == generation) throw_stuck();
      }
    }
    acquire(&warp_sync_[warp][k % 2]);
    return warp_slots_.data() + size_t(warp) * kWarpSize * kWarpSlotBytes;
  }

  unsigned char* warp_slot() override { return warp_slots_.data() + size_t(t_index_) * kWarpSlotBytes; }

 private:
  struct Worker {
    std::condition_variable wake;
  };
  struct Start {
    Pool* pool;
    int index;
    uint64_t seen;  // the block sequence number at creation: the thread runs the blocks after it
  };

  static size_t ceil_warps(int threads) { return static_cast<size_t>((threads + kWarpSize - 1) / kWarpSize); }

  void release_barrier(int waiters) {  // under mu_
    arrived_ = 0;
    waiting_ -= waiters;
    ++barrier_generation_;
    barrier_.notify_all();
  }

  // The calling thread is about to wait (under mu_). If every thread still running waits, no barrier can
  // open any more (a block barrier opens as its last thread arrives): some warp is stuck in a collective.
  void start_waiting() {
    ++waiting_;
    check_stuck();
  }

  void check_stuck() {  // under mu_
    if (stuck_ || live_ == 0 || waiting_ != live_) return;
    int warp = 0;
    while (warp < static_cast<int>(warp_arrived_.size()) && warp_arrived_[warp] == 0) ++warp;
    stuck_warp_ = warp;
    stuck_ = true;
    barrier_.notify_all();
    warp_barrier_.notify_all();
  }

  // Each thread composes the message itself: a string shared between the threads would race under TSan
  // (the locks order nothing there, see above).
  [[noreturn]] void throw_stuck() {  // under mu_, once stuck_
    TORCH_CHECK(false, warp_deadlock(name_, block_idx_, stuck_warp_, "returned from the kernel or wait at __syncthreads()"));
  }

  // pthread_create runs outside IgnoreSync: it orders what the thread is handed (its Start, its Worker)
  // before the thread runs.
  void grow(int threads) {
    for (;;) {
      Start* start = nullptr;
      {
        IgnoreSync ignore;
        std::lock_guard<std::mutex> lock(mu_);
        const int index = static_cast<int>(workers_.size());
        if (index >= threads) return;
        workers_.push_back(std::make_unique<Worker>());
        start = new Start{this, index, block_seq_};
      }
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setstacksize(&attr, kWorkerStack);
      pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
      pthread_t thread;
      const int rc = pthread_create(&thread, &attr, &Pool::start, start);
      pthread_attr_destroy(&attr);
      if (rc != 0) {
        {
          IgnoreSync ignore;
          std::lock_guard<std::mutex> lock(mu_);
          workers_.pop_back();
        }
        const int index = start->index;
        delete start;
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
    for (;;) {
      const std::function<void()>* body = nullptr;
      {
        IgnoreSync ignore;
        std::unique_lock<std::mutex> lock(mu_);
        workers_[index]->wake.wait(lock, [&] { return block_seq_ != seen && index < active_; });
        seen = block_seq_;
        threadIdx = thread_index(index, block_);
        blockIdx = block_idx_;
        blockDim = block_;
        gridDim = grid_;
        t_smem = smem_;
        body = body_;
      }
      acquire(&start_sync_);
      barriers_passed_ = 0;
      warp_barriers_passed_ = 0;
      t_index_ = index;
      std::exception_ptr error;
      try {
        (*body)();
      } catch (...) {
        error = std::current_exception();
      }
      release(&end_sync_);
      {
        IgnoreSync ignore;
        std::lock_guard<std::mutex> lock(mu_);
        if (error && !error_) error_ = error;
        barriers_[index] = barriers_passed_;
        if (--live_ > 0 && arrived_ == live_) release_barrier(arrived_);  // the others wait for no one else
        check_stuck();
        if (++finished_ == active_) done_.notify_one();
      }
    }
  }

  static thread_local int64_t barriers_passed_;  // by the calling CUDA thread, in its block
  static thread_local int64_t warp_barriers_passed_;
  static thread_local int t_index_;  // the calling CUDA thread's linear index in its block

  std::mutex mu_;
  std::condition_variable done_, barrier_, warp_barrier_;
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
  const char* name_ = "";
  // Warp barriers (under mu_, but for the slots, which the lanes use between their two barriers).
  std::vector<unsigned char> warp_slots_;
  std::vector<int> warp_arrived_;
  std::vector<uint64_t> warp_generation_;
  int waiting_ = 0;  // threads waiting at a barrier of either kind
  bool stuck_ = false;
  int stuck_warp_ = 0;
  // Addresses for TSan's happens-before edges (their contents are never used).
  char start_sync_ = 0, end_sync_ = 0, barrier_sync_[2] = {0, 0}, warp_sync_[kWarpSize][2] = {};
};

thread_local int64_t Pool::barriers_passed_ = 0;
thread_local int64_t Pool::warp_barriers_passed_ = 0;
thread_local int Pool::t_index_ = 0;

}  // namespace

std::string run_on_threads(const LaunchRun& launch) { return Pool::instance().run(launch); }

}  // namespace emulation
}  // namespace attnkern

#endif  // ATTNKERN_CUDA_EMULATION
