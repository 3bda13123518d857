// The emulated device behind cuda_emulation.h: configuration, launch checks and the launch log, the CUDA
// runtime subset, and a C interface (attnkern_emulation_*) for tools/cuda_emulation.py. The blocks of a
// launch are run by one of the schedulers of schedulers.h (thread_scheduler.cpp, fiber_scheduler.cpp).
//
// Configuration (environment at load time, or attnkern_emulation_configure later):
//   ATTNKERN_EMULATION_ORDER         forward | reverse | shuffled    order in which a launch's blocks run
//   ATTNKERN_EMULATION_SEED          integer                         seed of the shuffled order
//   ATTNKERN_EMULATION_TARGET        sm_80 | sm_86 | sm_90           device limits and attributes
//   ATTNKERN_EMULATION_GRID_STRIDE_BLOCKS  integer ≥ 0               cap on element_blocks() (0: none)
//   ATTNKERN_EMULATION_MULTIPROCESSORS     0 to 1024                 the SM count reported (0: the target's)
//   ATTNKERN_EMULATION_SCHEDULER     threads | fibers                how CUDA threads run (schedulers.h);
//                                                                    fibers by default, threads when sanitized
// Compiled only into the emulated library (tools/cuda_emulation.py defines ATTNKERN_CUDA_EMULATION): in
// any other build this file is empty, so a glob over the sources cannot link the emulator into attnkern._C.
#if defined(ATTNKERN_CUDA_EMULATION)

#include "emulation/cuda_emulation.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <vector>

#include "emulation/schedulers.h"

thread_local uint3 threadIdx{0, 0, 0};
thread_local uint3 blockIdx{0, 0, 0};
thread_local dim3 blockDim{1, 1, 1};
thread_local dim3 gridDim{1, 1, 1};

namespace attnkern {
namespace emulation {
namespace {

// Opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin) and SM counts: A100 (sm_80),
// A40 (sm_86), H100/H200 (sm_90).
const Target kTargets[] = {
    {"sm_80", 8, 0, 108, 163 * 1024},
    {"sm_86", 8, 6, 84, 99 * 1024},
    {"sm_90", 9, 0, 132, 227 * 1024},
};
const Target* const kDefaultTarget = &kTargets[1];  // the smallest opt-in limit of the default arch list

constexpr int64_t kDefaultDynamicSmem = 48 * 1024;  // more only after cudaFuncSetAttribute
constexpr int64_t kMaxThreadsPerBlock = 1024;
constexpr int64_t kMaxBlockDim[3] = {1024, 1024, 64};
constexpr int64_t kMaxGridDim[3] = {2147483647, 65535, 65535};

// ---- configuration ----

std::mutex config_mutex;

std::string set_field(Config& c, const std::string& key, const std::string& value) {
  if (key == "order") {
    if (value == "forward") c.order = BlockOrder::kForward;
    else if (value == "reverse") c.order = BlockOrder::kReverse;
    else if (value == "shuffled") c.order = BlockOrder::kShuffled;
    else return "order must be forward, reverse or shuffled, got '" + value + "'";
    return "";
  }
  if (key == "target") {
    for (const Target& t : kTargets) {
      if (value == t.name) {
        c.target = &t;
        return "";
      }
    }
    return "target must be sm_80, sm_86 or sm_90, got '" + value + "'";
  }
  if (key == "scheduler") {
    if (value == "threads") c.fibers = false;
    else if (value == "fibers" && fibers_available()) c.fibers = true;
    else if (value == "fibers") return "the fibers scheduler is not available in a sanitized build";
    else return "scheduler must be threads or fibers, got '" + value + "'";
    return "";
  }
  if (key == "seed" || key == "grid_stride_blocks" || key == "multiprocessors") {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno != 0 || v < 0) return key + " must be an integer >= 0, got '" + value + "'";
    if (key == "multiprocessors" && v > 1024) return "multiprocessors must be at most 1024, got '" + value + "'";
    if (key == "seed") c.seed = static_cast<uint64_t>(v);
    else if (key == "grid_stride_blocks") c.grid_stride_block_cap = v;
    else c.multiprocessors = static_cast<int>(v);
    return "";
  }
  return "unknown setting '" + key + "' (order, seed, target, grid_stride_blocks, multiprocessors, scheduler)";
}

Config& current_config() {  // under config_mutex
  static Config c = [] {
    Config initial;
    initial.target = kDefaultTarget;
    initial.fibers = fibers_available();
    const std::pair<const char*, const char*> vars[] = {{"ATTNKERN_EMULATION_ORDER", "order"},
                                                        {"ATTNKERN_EMULATION_SEED", "seed"},
                                                        {"ATTNKERN_EMULATION_TARGET", "target"},
                                                        {"ATTNKERN_EMULATION_GRID_STRIDE_BLOCKS", "grid_stride_blocks"},
                                                        {"ATTNKERN_EMULATION_MULTIPROCESSORS", "multiprocessors"},
                                                        {"ATTNKERN_EMULATION_SCHEDULER", "scheduler"}};
    for (const auto& [var, key] : vars) {
      if (const char* value = std::getenv(var)) {
        const std::string error = set_field(initial, key, value);
        TORCH_CHECK(error.empty(), var, ": ", error);
      }
    }
    return initial;
  }();
  return c;
}

std::string get_field(const Config& c, const std::string& key) {
  if (key == "order") return c.order == BlockOrder::kForward ? "forward" : c.order == BlockOrder::kReverse ? "reverse" : "shuffled";
  if (key == "target") return c.target->name;
  if (key == "seed") return std::to_string(c.seed);
  if (key == "grid_stride_blocks") return std::to_string(c.grid_stride_block_cap);
  if (key == "multiprocessors") return std::to_string(c.multiprocessors);
  if (key == "scheduler") return c.fibers ? "fibers" : "threads";
  return "";
}

// ---- function attributes (cudaFuncSetAttribute) and the launch log ----

std::mutex registry_mutex;
std::map<const void*, int>& dynamic_smem_allowed() {  // under registry_mutex
  static auto* allowed = new std::map<const void*, int>;
  return *allowed;
}

struct LogEntry {
  int64_t launches = 0;
  int64_t blocks = 0;
  std::set<std::string> signatures;  // the distinct template instantiations launched
};
std::map<std::string, LogEntry>& launch_log() {  // under registry_mutex
  static auto* log = new std::map<std::string, LogEntry>;
  return *log;
}

// "covariance_kernel<scalar_t, acc_t>" from covpool/covpool_cuda.cu -> "covpool_cuda.cu:covariance_kernel".
std::string log_key(const char* name, const char* file) {
  std::string kernel(name);
  kernel = kernel.substr(0, kernel.find('<'));
  kernel.erase(std::remove(kernel.begin(), kernel.end(), ' '), kernel.end());
  std::string base(file);
  const size_t slash = base.find_last_of('/');
  if (slash != std::string::npos) base = base.substr(slash + 1);
  return base + ":" + kernel;
}

std::string dim_str(const dim3& d) {
  std::ostringstream s;
  s << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return s.str();
}

std::mutex launch_mutex;  // one launch at a time (static __shared__ has one copy per kernel)
uint64_t launch_count = 0;

void check_shape(const void* function, const char* name, const LaunchShape& s, const Target& target) {
  const unsigned block[3] = {s.block.x, s.block.y, s.block.z}, grid[3] = {s.grid.x, s.grid.y, s.grid.z};
  const char* axis = "xyz";
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(block[i] >= 1 && block[i] <= kMaxBlockDim[i], "emulated CUDA launch of ", name, ": blockDim.", axis[i],
                " = ", block[i], " is outside [1, ", kMaxBlockDim[i], "] (invalid configuration argument)");
    TORCH_CHECK(grid[i] >= 1 && grid[i] <= kMaxGridDim[i], "emulated CUDA launch of ", name, ": gridDim.", axis[i],
                " = ", grid[i], " is outside [1, ", kMaxGridDim[i], "] (invalid configuration argument)");
  }
  const int64_t threads = int64_t(block[0]) * block[1] * block[2];
  TORCH_CHECK(threads <= kMaxThreadsPerBlock, "emulated CUDA launch of ", name, ": block ", dim_str(s.block), " has ",
              threads, " threads, more than ", kMaxThreadsPerBlock, " (invalid configuration argument)");
  const int64_t smem = static_cast<int64_t>(s.smem_bytes);
  TORCH_CHECK(smem <= target.smem_optin_bytes, "emulated CUDA launch of ", name, ": ", smem,
              " bytes of dynamic shared memory, more than the ", target.name, " limit of ", target.smem_optin_bytes);
  if (smem > kDefaultDynamicSmem) {
    int allowed = 0;
    {
      std::lock_guard<std::mutex> guard(registry_mutex);
      auto it = dynamic_smem_allowed().find(function);
      if (it != dynamic_smem_allowed().end()) allowed = it->second;
    }
    TORCH_CHECK(smem <= allowed, "emulated CUDA launch of ", name, ": ", smem,
                " bytes of dynamic shared memory need cudaFuncSetAttribute(kernel, "
                "cudaFuncAttributeMaxDynamicSharedMemorySize, >= ", smem, ") first (allowed now: ",
                allowed > 0 ? allowed : kDefaultDynamicSmem, ")");
  }
}

}  // namespace

Config config() {
  std::lock_guard<std::mutex> guard(config_mutex);
  return current_config();
}

std::string configure(const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> guard(config_mutex);
  return set_field(current_config(), key, value);
}

int64_t grid_stride_block_cap(int64_t cap) {
  const int64_t lowered = config().grid_stride_block_cap;
  return lowered > 0 ? std::min(cap, lowered) : cap;
}

cudaError_t set_function_attribute(const void* function, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > config().target->smem_optin_bytes) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> guard(registry_mutex);
  dynamic_smem_allowed()[function] = value;
  return cudaSuccess;
}

void SharedMemoryDeleter::operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t{16}); }

SharedMemory allocate_shared_memory(size_t bytes) {
  return SharedMemory(static_cast<unsigned char*>(::operator new[](bytes, std::align_val_t{16})));
}

void check_vector_copy(const void* dst, const void* src, int bytes) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(dst) % bytes == 0 && reinterpret_cast<uintptr_t>(src) % bytes == 0,
              "emulated CUDA kernel: a ", bytes, "-byte copy from ", src, " to ", dst, ", not both aligned to it");
}

unsigned char* dynamic_shared_memory_base() {
  TORCH_CHECK(t_hooks != nullptr, "dynamic shared memory used outside an emulated CUDA kernel");
  return t_smem;
}

thread_local ThreadHooks* t_hooks = nullptr;
thread_local unsigned char* t_smem = nullptr;

uint3 block_index(uint64_t linear, const dim3& grid) {
  return {static_cast<unsigned>(linear % grid.x), static_cast<unsigned>((linear / grid.x) % grid.y),
          static_cast<unsigned>(linear / (uint64_t(grid.x) * grid.y))};
}

uint3 thread_index(int linear, const dim3& block) {
  const unsigned t = static_cast<unsigned>(linear);
  return {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
}

int linear_thread(const uint3& thread, const dim3& block) {
  return static_cast<int>(thread.x + block.x * (thread.y + block.y * thread.z));
}

std::string warp_deadlock(const char* name, const uint3& block, int warp, const char* why) {
  std::ostringstream s;
  s << "emulated CUDA kernel " << name << ", block " << dim_str(dim3(block)) << ": lanes of warp " << warp
    << " wait in a warp collective (__shfl_*_sync, __syncwarp, mma.sync, ldmatrix) that other lanes of the warp "
    << "never reach (they " << why << "); every lane of a warp must execute the same collective";
  return s.str();
}

std::string barrier_mismatch(const char* name, const uint3& block, const std::vector<int64_t>& barriers) {
  const auto [lo, hi] = std::minmax_element(barriers.begin(), barriers.end());
  if (lo == barriers.end() || *lo == *hi) return "";
  std::ostringstream s;
  s << "emulated CUDA kernel " << name << ", block " << dim_str(dim3(block))
    << ": its threads passed different numbers of __syncthreads() (thread " << (lo - barriers.begin()) << ": " << *lo
    << ", thread " << (hi - barriers.begin()) << ": " << *hi
    << "); a barrier that not every thread of the block reaches is undefined on a GPU";
  return s.str();
}

void run_launch(const void* function, const char* name, const char* file, const std::string& signature,
                const LaunchShape& shape, const std::function<void()>& body) {
  std::lock_guard<std::mutex> serial(launch_mutex);
  const Config c = config();
  check_shape(function, name, shape, *c.target);
  const uint64_t total = uint64_t(shape.grid.x) * shape.grid.y * shape.grid.z;
  {
    std::lock_guard<std::mutex> guard(registry_mutex);
    LogEntry& entry = launch_log()[log_key(name, file)];
    ++entry.launches;
    entry.blocks += static_cast<int64_t>(total);
    entry.signatures.insert(signature);
  }
  LaunchRun run;
  run.body = &body;
  run.grid = shape.grid;
  run.block = shape.block;
  run.smem_bytes = shape.smem_bytes;
  run.name = name;
  run.total_blocks = total;
  run.reverse = c.order == BlockOrder::kReverse;
  const uint64_t number = launch_count++;
  run.seed = c.seed * 0x9E3779B97F4A7C15ull + number;  // a different order for every launch, reproducibly
  if (c.order == BlockOrder::kShuffled) {
    TORCH_CHECK(total <= (uint64_t(1) << 26), "emulated CUDA launch of ", name, ": ", total,
                " blocks are too many to shuffle");
    run.shuffled.resize(total);
    std::iota(run.shuffled.begin(), run.shuffled.end(), uint64_t(0));
    std::mt19937_64 rng(run.seed);
    std::shuffle(run.shuffled.begin(), run.shuffled.end(), rng);
  }
  const std::string failure = c.fibers ? run_on_fibers(run) : run_on_threads(run);
  TORCH_CHECK(failure.empty(), failure);
}

std::string launch_log_text() {
  std::lock_guard<std::mutex> guard(registry_mutex);
  std::ostringstream s;
  for (const auto& [key, entry] : launch_log()) {
    s << key << '\t' << entry.launches << '\t' << entry.blocks << '\t';
    bool first = true;
    for (const auto& sig : entry.signatures) {
      s << (first ? "" : " ") << sig;
      first = false;
    }
    s << '\n';
  }
  return s.str();
}

// ---- warp collectives ----

int lane_id() {
  TORCH_CHECK(t_hooks != nullptr, "a warp collective called outside an emulated CUDA kernel");
  return linear_thread(threadIdx, blockDim) % kWarpSize;
}

const unsigned char* warp_exchange_begin(const void* mine, size_t size, unsigned mask, const char* what) {
  TORCH_CHECK(t_hooks != nullptr, what, " called outside an emulated CUDA kernel");
  TORCH_CHECK(mask == 0xffffffffu, what, ": the emulated device runs full-warp collectives only (mask 0xffffffff), got 0x",
              std::hex, mask);
  TORCH_CHECK(size <= kWarpSlotBytes, what, ": ", size, " bytes exchanged, more than ", kWarpSlotBytes);
  if (size > 0) std::memcpy(t_hooks->warp_slot(), mine, size);
  return t_hooks->sync_warp();
}

void warp_exchange_end() { t_hooks->sync_warp(); }

namespace {

float element_to_float(MmaElement elem, uint16_t bits) {
  if (elem == MmaElement::kBFloat16) return c10::BFloat16(bits, c10::BFloat16::from_bits());
  return c10::Half(bits, c10::Half::from_bits());
}

// Element `e` (0 or 1) of a register holding two 16-bit elements, the first in the low half.
uint16_t half_of(uint32_t reg, int e) { return static_cast<uint16_t>(e == 0 ? reg & 0xFFFFu : reg >> 16); }

}  // namespace

// The fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4:
//   A (16×16, row): a_i of register i / 2 at row g + 8·((i / 2) % 2), column 2t + i % 2 + 8·(i / 4)
//   B (16×8, col):  b_i of register i / 2 at row 2t + i % 2 + 8·(i / 2), column g
//   C, D (16×8):    c_i at row g + 8·(i / 2), column 2t + i % 2
// so A[r][k] lies in lane 4·(r % 8) + (k % 8) / 2, element 4·(k / 8) + 2·(r / 8) + k % 2, and B[k][n] in
// lane 4·n + (k % 8) / 2, element 2·(k / 8) + k % 2. Products are exact in float (11- or 8-bit
// significands), summed over k in order.
void mma_m16n8k16(MmaElement elem, float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  const unsigned char* slots = warp_exchange_begin(mine, sizeof(mine), 0xffffffffu, "mma.sync");
  auto reg = [&](int lane, int index) {  // register `index` of `lane`'s a (0–3) and b (4, 5)
    uint32_t value;
    std::memcpy(&value, slots + lane * kWarpSlotBytes + index * sizeof(uint32_t), sizeof(value));
    return value;
  };
  auto A = [&](int r, int k) {
    const int i = 4 * (k / 8) + 2 * (r / 8) + k % 2;
    return element_to_float(elem, half_of(reg(4 * (r % 8) + (k % 8) / 2, i / 2), i % 2));
  };
  auto B = [&](int k, int n) {
    const int i = 2 * (k / 8) + k % 2;
    return element_to_float(elem, half_of(reg(4 * n + (k % 8) / 2, 4 + i / 2), i % 2));
  };
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
  float result[4];
  for (int i = 0; i < 4; ++i) {
    const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
    float sum = c[i];
    for (int k = 0; k < 16; ++k) sum = std::fma(A(r, k), B(k, n), sum);
    result[i] = sum;
  }
  warp_exchange_end();
  std::copy(result, result + 4, d);
}

void ldmatrix_rows(int count, const void* row_address, const unsigned char** rows) {
  TORCH_CHECK(count == 1 || count == 2 || count == 4, "ldmatrix: .x", count, " is not .x1, .x2 or .x4");
  const int lane = lane_id();
  const bool gives_row = lane < 8 * count;  // the other lanes' addresses are not used
  TORCH_CHECK(!gives_row || reinterpret_cast<uintptr_t>(row_address) % 16 == 0, "ldmatrix: lane ", lane,
              "'s row address ", row_address, " is not 16-byte aligned");
  const unsigned char* slots = warp_exchange_begin(&row_address, sizeof(row_address), 0xffffffffu, "ldmatrix");
  for (int l = 0; l < 8 * count; ++l) std::memcpy(&rows[l], slots + l * kWarpSlotBytes, sizeof(rows[l]));
  warp_exchange_end();
}

}  // namespace emulation
}  // namespace attnkern

// ---- the CUDA runtime subset ----

void __syncthreads() {
  TORCH_CHECK(attnkern::emulation::t_hooks != nullptr, "__syncthreads() called outside an emulated CUDA kernel");
  attnkern::emulation::t_hooks->sync_threads();
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() { return cudaSuccess; }  // a failed emulated launch has thrown already
cudaError_t cudaPeekAtLastError() { return cudaSuccess; }

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  const attnkern::emulation::Config c = attnkern::emulation::config();
  const attnkern::emulation::Target& t = *c.target;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxBlockDimX: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxBlockDimY: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxBlockDimZ: *value = 64; return cudaSuccess;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; return cudaSuccess;
    case cudaDevAttrMaxGridDimY: *value = 65535; return cudaSuccess;
    case cudaDevAttrMaxGridDimZ: *value = 65535; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = c.multiprocessors > 0 ? c.multiprocessors : t.multiprocessors;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = t.major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = t.minor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = t.smem_optin_bytes; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

// ---- C interface for Python (ctypes) ----

extern "C" {

// Sets one setting (order, seed, target, grid_stride_blocks, multiprocessors, scheduler); returns "" or the error.
const char* attnkern_emulation_configure(const char* key, const char* value) {
  thread_local std::string result;
  result = attnkern::emulation::configure(key, value);
  return result.c_str();
}

const char* attnkern_emulation_get(const char* key) {
  thread_local std::string result;
  result = attnkern::emulation::get_field(attnkern::emulation::config(), key);
  return result.c_str();
}

// One line per kernel launched so far: "file:kernel<TAB>launches<TAB>blocks<TAB>signature signature ...".
const char* attnkern_emulation_launch_log() {
  thread_local std::string result;
  result = attnkern::emulation::launch_log_text();
  return result.c_str();
}

void attnkern_emulation_clear_launch_log() {
  std::lock_guard<std::mutex> guard(attnkern::emulation::registry_mutex);
  attnkern::emulation::launch_log().clear();
}

}  // extern "C"

#endif  // ATTNKERN_CUDA_EMULATION
