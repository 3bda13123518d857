// Copies of real kernels with one bug planted in each, to show that the sanitized emulated builds catch
// that kind of bug (tests/test_cuda_emulation.py runs each in a sanitized subprocess and reads the
// report). Built into the emulated library only; never called by the other tests.
//
//   planted_missing_barrier   covpool's row_mean_kernel, its block reduction without the barrier after
//                             each thread stores its partial sum: a shared-memory race (ThreadSanitizer).
//   planted_reused_scratch    gating's channel_pool_kernel, whose two block reductions share one scratch
//                             array, without the barrier that ends the first: thread 0 starts the second
//                             while the others still read the first's result (ThreadSanitizer).
//   planted_shared_overrun    criss-cross's attention_forward_kernel, its block reductions guarded with
//                             `<=` instead of `<`: the last step reads one element past the dynamic
//                             shared memory (AddressSanitizer: heap-buffer-overflow).
//   planted_global_overrun    covpool's triuvec_kernel with its grid-stride loop running to `idx <= total`:
//                             one write past the output tensor (AddressSanitizer: heap-buffer-overflow).
//   planted_misaligned_copy   a copy in 16-byte chunks whose width comes from the length alone, not the
//                             addresses: a view that starts off a 16-byte boundary faults on a GPU (every
//                             build's copy_chunk reports it).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "common/cuda_vector.cuh"
#include "covpool/covpool.h"
#include "criss_cross/criss_cross.h"

namespace attnkern {
namespace planted {
namespace {

// ---- the race: block_sum without its first barrier ----

template <typename acc_t>
__device__ acc_t racy_block_sum(acc_t value, acc_t* scratch) {
  scratch[threadIdx.x] = value;
  // PLANTED: the __syncthreads() that publishes every thread's value is missing.
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  acc_t total = scratch[0];
  __syncthreads();
  return total;
}

constexpr int kMeanThreads = 256;

template <typename acc_t>
__global__ void row_mean_missing_barrier_kernel(const acc_t* __restrict__ x, acc_t* __restrict__ mean, int64_t M) {
  __shared__ acc_t scratch[kMeanThreads];
  const acc_t* row = x + blockIdx.x * M;
  acc_t sum = 0;
  for (int64_t m = threadIdx.x; m < M; m += blockDim.x) sum += row[m];
  sum = racy_block_sum(sum, scratch);
  if (threadIdx.x == 0) mean[blockIdx.x] = sum / static_cast<acc_t>(M);
}

at::Tensor planted_missing_barrier(const at::Tensor& x_in) {  // x [rows, M] float64 -> row means
  auto x = x_in.to(at::kDouble).contiguous();
  auto mean = at::empty({x.size(0)}, x.options());
  ATTNKERN_LAUNCH(x.size(0), kMeanThreads, 0, c10::cuda::getCurrentCUDAStream(),
                  row_mean_missing_barrier_kernel<double>)(x.const_data_ptr<double>(), mean.mutable_data_ptr<double>(),
                                                           x.size(1));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return mean;
}

// ---- the second race: two reductions through one scratch array, the first without its last barrier ----

template <typename acc_t, typename Combine>
__device__ acc_t unfinished_block_reduce(acc_t value, acc_t* scratch, Combine combine) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) scratch[threadIdx.x] = combine(scratch[threadIdx.x], scratch[threadIdx.x + stride]);
    __syncthreads();
  }
  // PLANTED: the __syncthreads() after this read is missing; the next reduction overwrites scratch[0].
  return scratch[0];
}

constexpr int kPlaneThreads = 256;

template <typename acc_t>
__global__ void channel_pool_reused_scratch_kernel(const acc_t* __restrict__ x, acc_t* __restrict__ mean,
                                                   acc_t* __restrict__ max, int64_t HW) {
  __shared__ acc_t scratch[kPlaneThreads];
  const acc_t* row = x + blockIdx.x * HW;
  acc_t sum = 0, mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) {
    sum += row[j];
    mx = row[j] > mx ? row[j] : mx;
  }
  sum = unfinished_block_reduce(sum, scratch, [](acc_t a, acc_t b) { return a + b; });
  mx = unfinished_block_reduce(mx, scratch, [](acc_t a, acc_t b) { return a > b ? a : b; });
  if (threadIdx.x == 0) {
    mean[blockIdx.x] = sum / static_cast<acc_t>(HW);
    max[blockIdx.x] = mx;
  }
}

at::Tensor planted_reused_scratch(const at::Tensor& x_in) {  // x [planes, HW] float64 -> [2, planes]
  auto x = x_in.to(at::kDouble).contiguous();
  auto out = at::empty({2, x.size(0)}, x.options());
  ATTNKERN_LAUNCH(x.size(0), kPlaneThreads, 0, c10::cuda::getCurrentCUDAStream(),
                  channel_pool_reused_scratch_kernel<double>)(x.const_data_ptr<double>(),
                                                              out.mutable_data_ptr<double>(),
                                                              out.mutable_data_ptr<double>() + x.size(0), x.size(1));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- the shared-memory overrun: a block reduction that reads scratch[blockDim.x] ----

template <typename acc_t, typename Combine>
__device__ acc_t overrunning_block_reduce(acc_t value, acc_t* scratch, Combine combine) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    // PLANTED: `<=` for `<`; thread `stride` of the first step reads scratch[2·stride] = scratch[blockDim.x].
    if (threadIdx.x <= stride) scratch[threadIdx.x] = combine(scratch[threadIdx.x], scratch[threadIdx.x + stride]);
    __syncthreads();
  }
  acc_t total = scratch[0];
  __syncthreads();
  return total;
}

constexpr int kPixelThreads = 128;

template <typename acc_t>
__global__ void attention_forward_overrun_kernel(const acc_t* __restrict__ q, const acc_t* __restrict__ k,
                                                 const acc_t* __restrict__ v, acc_t* __restrict__ out, int64_t Cq,
                                                 int64_t Cv, int64_t H, int64_t W) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  acc_t* weights = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t HW = H * W, P = H + W - 1;
  acc_t* scratch = weights + P;  // kPixelThreads elements: the end of the dynamic shared memory
  const int64_t b = blockIdx.x / HW, pixel = blockIdx.x % HW, h = pixel / W, w = pixel % W;
  const acc_t* qb = q + b * Cq * HW;
  const acc_t* kb = k + b * Cq * HW;
  const acc_t* vb = v + b * Cv * HW;
  acc_t local_max = -INFINITY;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    weights[p] = criss_cross::affinity_entry<acc_t>(qb, kb, Cq, H, W, p, h, w);
    local_max = max(local_max, weights[p]);
  }
  const acc_t row_max = overrunning_block_reduce(local_max, scratch, [](acc_t a, acc_t b) { return a > b ? a : b; });
  acc_t local_sum = 0;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    weights[p] = exp(weights[p] - row_max);
    local_sum += weights[p];
  }
  const acc_t sum = overrunning_block_reduce(local_sum, scratch, [](acc_t a, acc_t b) { return a + b; });
  for (int64_t c = threadIdx.x; c < Cv; c += blockDim.x) {
    acc_t acc = 0;
    for (int64_t p = 0; p < P; ++p) acc += weights[p] * vb[c * HW + criss_cross::position_offset(p, h, w, H, W)];
    out[(b * Cv + c) * HW + pixel] = acc / sum;
  }
}

at::Tensor planted_shared_overrun(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in) {
  auto q = q_in.to(at::kDouble).contiguous(), k = k_in.to(at::kDouble).contiguous(), v = v_in.to(at::kDouble).contiguous();
  const int64_t B = q.size(0), Cq = q.size(1), H = q.size(2), W = q.size(3), Cv = v.size(1), P = H + W - 1;
  auto out = at::empty_like(v);
  const int64_t smem = (P + kPixelThreads) * static_cast<int64_t>(sizeof(double));
  ATTNKERN_LAUNCH(B * H * W, kPixelThreads, smem, c10::cuda::getCurrentCUDAStream(),
                  attention_forward_overrun_kernel<double>)(q.const_data_ptr<double>(), k.const_data_ptr<double>(),
                                                            v.const_data_ptr<double>(), out.mutable_data_ptr<double>(),
                                                            Cq, Cv, H, W);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- the global overrun: a row copy one element too long ----

template <typename scalar_t>
__global__ void triuvec_overrun_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out, int64_t n,
                                       int64_t len, int64_t rows) {
  ATTNKERN_BLOCK_STRIDE_LOOP(row, rows) {
    const int64_t b = row / n, i = row % n;
    // PLANTED: `j <= i + 1` for `j <= i` (the last row writes one past the output).
    for (int64_t j = threadIdx.x; j <= i + 1; j += blockDim.x) {
      out[b * len + covpool::triu_index(i, 0) + j] = a[row * n + j % n];
    }
  }
}

at::Tensor planted_global_overrun(const at::Tensor& a_in) {  // a [B, n, n] float64
  auto a = a_in.to(at::kDouble).contiguous();
  const int64_t batch = a.size(0), n = a.size(1), len = n * (n + 1) / 2;
  auto out = at::empty({batch, len}, a.options());
  ATTNKERN_LAUNCH(row_blocks(batch * n), row_threads(n), 0, c10::cuda::getCurrentCUDAStream(),
                  triuvec_overrun_kernel<double>)(a.const_data_ptr<double>(), out.mutable_data_ptr<double>(), n, len,
                                                  batch * n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- the misaligned copy: a vector width from the length alone ----

__global__ void misaligned_copy_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t chunks, int vec) {
  ATTNKERN_GRID_STRIDE_LOOP(chunk, chunks) copy_elements(out + chunk * vec, x + chunk * vec, vec);
}

at::Tensor planted_misaligned_copy(const at::Tensor& x_in) {  // float32; a view may start anywhere
  auto x = x_in.contiguous();
  auto out = at::empty_like(x);
  // PLANTED: vector_width without x's address (`{x.const_data_ptr(), out.const_data_ptr()}`).
  const int vec = vector_width(x.numel(), sizeof(float), {out.const_data_ptr()});
  ATTNKERN_LAUNCH(element_blocks(x.numel() / vec), kElementThreads, 0, c10::cuda::getCurrentCUDAStream(),
                  misaligned_copy_kernel)(x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), x.numel() / vec,
                                          vec);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY(attnkern_planted_bugs, m) {
  m.def("planted_missing_barrier(Tensor x) -> Tensor", &planted_missing_barrier);
  m.def("planted_reused_scratch(Tensor x) -> Tensor", &planted_reused_scratch);
  m.def("planted_shared_overrun(Tensor q, Tensor k, Tensor v) -> Tensor", &planted_shared_overrun);
  m.def("planted_global_overrun(Tensor a) -> Tensor", &planted_global_overrun);
  m.def("planted_misaligned_copy(Tensor x) -> Tensor", &planted_misaligned_copy);
}

}  // namespace planted
}  // namespace attnkern
