// CUDA kernels of the region_conv family: one thread per output element (or per pixel for the guide
// gradient), through the shared functions of region_conv.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cuda_utils.cuh"
#include "region_conv/region_conv.h"

namespace attnkern {
namespace region_conv {
namespace {

constexpr int kThreads = 256;

int64_t grid_for(int64_t total) { return std::min<int64_t>(ceil_div(total, kThreads), 65535 * 16); }

#define ATTNKERN_GRID_STRIDE_LOOP(idx, total)                                                      \
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < (total); \
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename scalar_t>
__global__ void region_assign_kernel(const scalar_t* __restrict__ outputs, const scalar_t* __restrict__ guide,
                                     scalar_t* __restrict__ out, int64_t R, int64_t C, int64_t HW, int64_t total) {
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {  // idx = (b·C + c)·HW + p
    const int64_t p = idx % HW, c = (idx / HW) % C, b = idx / (C * HW);
    const int64_t r = selected_region(guide + b * R * HW + p, R, HW);
    out[idx] = outputs[((b * R + r) * C + c) * HW + p];
  }
}

template <typename scalar_t>
__global__ void region_assign_grad_outputs_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ guide,
                                                  scalar_t* __restrict__ grad_outputs, int64_t R, int64_t C,
                                                  int64_t HW, int64_t total) {
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {  // idx = ((b·R + r)·C + c)·HW + p
    const int64_t p = idx % HW, c = (idx / HW) % C, r = (idx / (C * HW)) % R, b = idx / (R * C * HW);
    const bool selected = selected_region(guide + b * R * HW + p, R, HW) == r;
    grad_outputs[idx] = selected ? grad[(b * C + c) * HW + p] : scalar_t(0);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void region_assign_grad_guide_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ outputs,
                                                const scalar_t* __restrict__ guide, scalar_t* __restrict__ grad_guide,
                                                int64_t R, int64_t C, int64_t HW, int64_t total) {
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {  // idx = b·HW + p
    const int64_t p = idx % HW, b = idx / HW;
    guide_gradient<acc_t>(guide + b * R * HW + p, grad + b * C * HW + p, outputs + b * R * C * HW + p,
                          grad_guide + b * R * HW + p, R, C, HW, C * HW);
  }
}

at::Tensor region_assign_cuda(const at::Tensor& outputs_in, const at::Tensor& guide_in) {
  check_region_assign_inputs(outputs_in, guide_in, "region_assign");
  c10::cuda::CUDAGuard device_guard(outputs_in.device());
  auto outputs = outputs_in.contiguous(), guide = guide_in.contiguous();
  const int64_t B = outputs.size(0), R = outputs.size(1), C = outputs.size(2), HW = outputs.size(3) * outputs.size(4);
  auto out = at::empty({B, C, outputs.size(3), outputs.size(4)}, outputs.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, outputs.scalar_type(), "region_assign_cuda", [&] {
    region_assign_kernel<scalar_t><<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        outputs.const_data_ptr<scalar_t>(), guide.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), R, C,
        HW, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> region_assign_backward_cuda(const at::Tensor& grad_in, const at::Tensor& outputs_in,
                                                               const at::Tensor& guide_in) {
  check_region_assign_inputs(outputs_in, guide_in, "region_assign_backward");
  check_region_assign_grad(grad_in, outputs_in);
  c10::cuda::CUDAGuard device_guard(outputs_in.device());
  auto outputs = outputs_in.contiguous(), guide = guide_in.contiguous(), grad = grad_in.contiguous();
  const int64_t B = outputs.size(0), R = outputs.size(1), C = outputs.size(2), HW = outputs.size(3) * outputs.size(4);
  auto grad_outputs = at::empty_like(outputs), grad_guide = at::empty_like(guide);
  if (outputs.numel() == 0 && guide.numel() == 0) return {grad_outputs, grad_guide};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, outputs.scalar_type(), "region_assign_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (outputs.numel() > 0) {
      region_assign_grad_outputs_kernel<scalar_t><<<grid_for(outputs.numel()), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), guide.const_data_ptr<scalar_t>(), grad_outputs.mutable_data_ptr<scalar_t>(),
          R, C, HW, outputs.numel());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (B * HW > 0) {
      region_assign_grad_guide_kernel<scalar_t, acc_t><<<grid_for(B * HW), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), outputs.const_data_ptr<scalar_t>(), guide.const_data_ptr<scalar_t>(),
          grad_guide.mutable_data_ptr<scalar_t>(), R, C, HW, B * HW);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_outputs, grad_guide};
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CUDA, m) {
  m.impl("region_assign", &region_assign_cuda);
  m.impl("region_assign_backward", &region_assign_backward_cuda);
}

}  // namespace region_conv
}  // namespace attnkern
