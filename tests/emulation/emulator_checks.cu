// Kernels that test the CUDA emulator itself (csrc/emulation), built into the emulated library only
// (tools/cuda_emulation.py) and called by tests/test_cuda_emulation.py as
// torch.ops.attnkern_emulation_tests.*: launch checks, built-in variables, block order, barriers,
// poisoned dynamic shared memory, CUDA's max/min, device attributes.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"

namespace attnkern {
namespace emulation_tests {
namespace {

// Every thread writes its (threadIdx, blockIdx, blockDim, gridDim) at its flat position.
__global__ void indices_kernel(int64_t* __restrict__ out) {
  const int64_t block = (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t thread = (int64_t(threadIdx.z) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  int64_t* o = out + (block * blockDim.x * blockDim.y * blockDim.z + thread) * 12;
  const unsigned v[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z,
                          blockDim.x,  blockDim.y,  blockDim.z,  gridDim.x,  gridDim.y,  gridDim.z};
  for (int i = 0; i < 12; ++i) o[i] = v[i];
}

at::Tensor indices(int64_t gx, int64_t gy, int64_t gz, int64_t bx, int64_t by, int64_t bz) {
  auto out = at::full({gx * gy * gz * bx * by * bz, 12}, -1, at::kLong);
  ATTNKERN_LAUNCH(dim3(gx, gy, gz), dim3(bx, by, bz), 0, c10::cuda::getCurrentCUDAStream(), indices_kernel)(
      out.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// The order in which the blocks ran: blocks run one at a time, so thread 0 of each may append to a
// list without atomics here (never on a GPU).
__global__ void block_order_kernel(int64_t* __restrict__ order, int64_t* __restrict__ count) {
  if (threadIdx.x == 0) order[(*count)++] = blockIdx.x;
}

at::Tensor block_order(int64_t blocks) {
  auto order = at::full({blocks}, -1, at::kLong);
  auto count = at::zeros({1}, at::kLong);
  ATTNKERN_LAUNCH(blocks, 32, 0, c10::cuda::getCurrentCUDAStream(), block_order_kernel)(
      order.mutable_data_ptr<int64_t>(), count.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return order;
}

// A trivial kernel to launch with any configuration.
__global__ void empty_kernel(int64_t* __restrict__ ran) {
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0 && blockIdx.x == 0 && blockIdx.y == 0 &&
      blockIdx.z == 0) {
    *ran = 1;
  }
}

// Launches empty_kernel; allow > 0 first raises its dynamic shared memory limit to `allow` bytes.
int64_t launch(int64_t gx, int64_t gy, int64_t gz, int64_t bx, int64_t by, int64_t bz, int64_t smem, int64_t allow) {
  if (allow > 0) allow_smem(empty_kernel, allow);
  auto ran = at::zeros({1}, at::kLong);
  ATTNKERN_LAUNCH(dim3(gx, gy, gz), dim3(bx, by, bz), smem, c10::cuda::getCurrentCUDAStream(), empty_kernel)(
      ran.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return ran.item<int64_t>();
}

// A kernel whose dynamic shared memory limit no code ever raises.
__global__ void never_opted_in_kernel(int64_t* __restrict__ ran) {
  if (threadIdx.x == 0 && blockIdx.x == 0) *ran = 1;
}

int64_t launch_without_opt_in(int64_t smem) {
  auto ran = at::zeros({1}, at::kLong);
  ATTNKERN_LAUNCH(1, 32, smem, c10::cuda::getCurrentCUDAStream(), never_opted_in_kernel)(
      ran.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return ran.item<int64_t>();
}

// The same with a 1-D grid given as a 64-bit integer (as the kernels' host code passes it).
int64_t launch_blocks(int64_t blocks) {
  auto ran = at::zeros({1}, at::kLong);
  ATTNKERN_LAUNCH(blocks, 1, 0, c10::cuda::getCurrentCUDAStream(), empty_kernel)(ran.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return ran.item<int64_t>();
}

// The odd threads leave before the barrier the even ones wait at.
__global__ void divergent_barrier_kernel(int64_t* __restrict__ out) {
  if (threadIdx.x % 2 == 1) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

void divergent_barrier() {
  auto out = at::zeros({64}, at::kLong);
  ATTNKERN_LAUNCH(1, 64, 0, c10::cuda::getCurrentCUDAStream(), divergent_barrier_kernel)(
      out.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// A block-wide reduction through a barrier: thread t adds t; every thread reads the total after it.
__global__ void barrier_sum_kernel(int64_t* __restrict__ out) {
  __shared__ int64_t values[256];
  values[threadIdx.x] = threadIdx.x;
  __syncthreads();
  int64_t sum = 0;
  for (unsigned i = 0; i < blockDim.x; ++i) sum += values[i];
  __syncthreads();  // values is rewritten by the next block only after every thread has read it
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

at::Tensor barrier_sum(int64_t blocks, int64_t threads) {
  auto out = at::full({blocks, threads}, -1, at::kLong);
  ATTNKERN_LAUNCH(blocks, threads, 0, c10::cuda::getCurrentCUDAStream(), barrier_sum_kernel)(
      out.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Copies the block's dynamic shared memory, unwritten, to out: what an uninitialised read sees.
template <typename T>
__global__ void unwritten_shared_kernel(T* __restrict__ out, int64_t n) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  const T* smem = reinterpret_cast<const T*>(smem_raw);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[blockIdx.x * n + i] = smem[i];
  __syncthreads();
  // Block 0 writes its shared memory: the next block must see the poison again.
  if (blockIdx.x == 0) {
    T* writable = reinterpret_cast<T*>(smem_raw);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) writable[i] = T(1);
  }
}

at::Tensor unwritten_shared(int64_t n, at::ScalarType dtype) {
  auto out = at::zeros({2, n}, at::TensorOptions().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "unwritten_shared", [&] {
    ATTNKERN_LAUNCH(2, 32, n * static_cast<int64_t>(sizeof(scalar_t)), c10::cuda::getCurrentCUDAStream(),
                    unwritten_shared_kernel<scalar_t>)(out.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// CUDA's max and min of two float or double columns (fmax/fmin: a NaN operand loses).
template <typename T>
__global__ void max_min_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t n) {
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    out[i] = max(a[i], b[i]);
    out[n + i] = min(a[i], b[i]);
  }
}

at::Tensor max_min(const at::Tensor& a_in, const at::Tensor& b_in) {
  auto a = a_in.contiguous(), b = b_in.contiguous();
  auto out = at::empty({2, a.numel()}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "max_min", [&] {
    ATTNKERN_LAUNCH(1, 64, 0, c10::cuda::getCurrentCUDAStream(), max_min_kernel<scalar_t>)(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), a.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

int64_t device_attribute(int64_t attr) {
  int value = -1;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, static_cast<cudaDeviceAttr>(attr), 0));
  return value;
}

}  // namespace

TORCH_LIBRARY(attnkern_emulation_tests, m) {
  m.def("indices(int gx, int gy, int gz, int bx, int by, int bz) -> Tensor", &indices);
  m.def("block_order(int blocks) -> Tensor", &block_order);
  m.def("launch(int gx, int gy, int gz, int bx, int by, int bz, int smem, int allow) -> int", &launch);
  m.def("launch_without_opt_in(int smem) -> int", &launch_without_opt_in);
  m.def("launch_blocks(int blocks) -> int", &launch_blocks);
  m.def("divergent_barrier() -> ()", &divergent_barrier);
  m.def("barrier_sum(int blocks, int threads) -> Tensor", &barrier_sum);
  m.def("unwritten_shared(int n, ScalarType dtype) -> Tensor", &unwritten_shared);
  m.def("max_min(Tensor a, Tensor b) -> Tensor", &max_min);
  m.def("device_attribute(int attr) -> int", &device_attribute);
}

}  // namespace emulation_tests
}  // namespace attnkern
