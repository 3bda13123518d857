// CUDA kernels of the criss-cross family: one thread per output element, through the shared entry
// functions of criss_cross.h (consecutive threads take consecutive w, so loads along a row coalesce).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cuda_utils.cuh"
#include "criss_cross/criss_cross.h"

namespace attnkern {
namespace criss_cross {
namespace {

constexpr int kThreads = 256;

int64_t grid_for(int64_t total) { return std::min<int64_t>(ceil_div(total, kThreads), 65535 * 16); }

template <typename scalar_t, typename acc_t>
__global__ void affinity_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                scalar_t* __restrict__ energy, int64_t C, int64_t H, int64_t W, int64_t total) {
  const int64_t P = H + W - 1;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {  // idx = ((b·P + p)·H + h)·W + w
    const int64_t w = idx % W, h = (idx / W) % H, p = (idx / (H * W)) % P, b = idx / (P * H * W);
    energy[idx] = static_cast<scalar_t>(affinity_entry<acc_t>(q + b * C * H * W, k + b * C * H * W, C, H, W, p, h, w));
  }
}

template <bool transposed, typename scalar_t, typename acc_t>
__global__ void aggregate_kernel(const scalar_t* __restrict__ attn, const scalar_t* __restrict__ x,
                                 scalar_t* __restrict__ out, int64_t C, int64_t H, int64_t W, int64_t total) {
  const int64_t P = H + W - 1;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {  // idx = ((b·C + c)·H + h)·W + w
    const int64_t w = idx % W, h = (idx / W) % H, plane = idx / (H * W), b = plane / C;
    const scalar_t* a_b = attn + b * P * H * W;
    const scalar_t* x_plane = x + plane * H * W;
    const acc_t value = transposed ? aggregate_transposed_entry<acc_t>(a_b, x_plane, H, W, h, w)
                                   : aggregate_entry<acc_t>(a_b, x_plane, H, W, h, w);
    out[idx] = static_cast<scalar_t>(value);
  }
}

at::Tensor affinity_cuda(const at::Tensor& q_in, const at::Tensor& k_in) {
  check_affinity_inputs(q_in, k_in);
  c10::cuda::CUDAGuard guard(q_in.device());
  auto q = q_in.contiguous(), k = k_in.contiguous();
  const int64_t B = q.size(0), C = q.size(1), H = q.size(2), W = q.size(3);
  auto energy = at::empty({B, H + W - 1, H, W}, q.options());
  const int64_t total = energy.numel();
  if (total == 0) return energy;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "criss_cross_affinity_cuda", [&] {
    affinity_kernel<scalar_t, at::opmath_type<scalar_t>>
        <<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), energy.mutable_data_ptr<scalar_t>(), C, H, W,
            total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return energy;
}

template <bool transposed>
at::Tensor aggregate_cuda(const at::Tensor& attn_in, const at::Tensor& x_in) {
  check_aggregate_inputs(attn_in, x_in, transposed ? "criss_cross_aggregate_transposed" : "criss_cross_aggregate",
                         transposed ? "x" : "v");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto attn = attn_in.contiguous(), x = x_in.contiguous();
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  auto out = at::empty_like(x);
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "criss_cross_aggregate_cuda", [&] {
    aggregate_kernel<transposed, scalar_t, at::opmath_type<scalar_t>>
        <<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            attn.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), C, H, W,
            total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CUDA, m) {
  m.impl("criss_cross_affinity", &affinity_cuda);
  m.impl("criss_cross_aggregate", &aggregate_cuda<false>);
  m.impl("criss_cross_aggregate_transposed", &aggregate_cuda<true>);
}

}  // namespace criss_cross
}  // namespace attnkern
