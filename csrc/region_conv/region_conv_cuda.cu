// CUDA kernels of the region_conv family: one thread per output element (or per pixel for the guide
// gradient), through the shared functions of region_conv.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "region_conv/region_conv.h"
#include "region_conv/region_conv_checks.h"

namespace attnkern {
namespace region_conv {
namespace {

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
    const scalar_t* grad_p = grad + b * C * HW + p;
    const scalar_t* outputs_p = outputs + b * R * C * HW + p;
    guide_gradient<acc_t>(guide + b * R * HW + p, grad_guide + b * R * HW + p, R, HW, [&](int64_t r) {
      return region_response<acc_t>(grad_p, outputs_p, r, C, C * HW, HW);
    });
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
    ATTNKERN_LAUNCH(element_blocks(total), kElementThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    region_assign_kernel<scalar_t>)(
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
      ATTNKERN_LAUNCH(element_blocks(outputs.numel()), kElementThreads, 0, stream,
                      region_assign_grad_outputs_kernel<scalar_t>)(
          grad.const_data_ptr<scalar_t>(), guide.const_data_ptr<scalar_t>(), grad_outputs.mutable_data_ptr<scalar_t>(),
          R, C, HW, outputs.numel());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (B * HW > 0) {
      ATTNKERN_LAUNCH(element_blocks(B * HW), kElementThreads, 0, stream,
                      region_assign_grad_guide_kernel<scalar_t, acc_t>)(
          grad.const_data_ptr<scalar_t>(), outputs.const_data_ptr<scalar_t>(), guide.const_data_ptr<scalar_t>(),
          grad_guide.mutable_data_ptr<scalar_t>(), R, C, HW, B * HW);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_outputs, grad_guide};
}

// ---- dynamic region convolution: one thread per element of each result, all gathers ----------

template <typename scalar_t>
__global__ void selected_regions_kernel(const scalar_t* __restrict__ guide, int64_t* __restrict__ region, int64_t R,
                                        int64_t L, int64_t total) {
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {  // idx = b·L + l
    region[idx] = selected_region(guide + (idx / L) * R * L + idx % L, R, L);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void dynamic_conv_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ filters,
                                            const int64_t* __restrict__ region, scalar_t* __restrict__ out,
                                            ConvGeometry g, int64_t R, int64_t total) {
  const int64_t L = g.out_height * g.out_width, filter_elems = g.out_channels * g.filter_size();
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {  // idx = (b·Cout + o)·L + l
    const int64_t l = idx % L, o = (idx / L) % g.out_channels, b = idx / (g.out_channels * L);
    const scalar_t* filter = filters + (b * R + region[b * L + l]) * filter_elems;
    const scalar_t* xb = x + b * g.in_channels * g.height * g.width;
    out[idx] = static_cast<scalar_t>(conv_entry<acc_t>(xb, filter, g, o, l / g.out_width, l % g.out_width));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void dynamic_conv_grad_x_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ filters,
                                           const int64_t* __restrict__ region, scalar_t* __restrict__ grad_x,
                                           ConvGeometry g, int64_t R, int64_t total) {
  const int64_t L = g.out_height * g.out_width, filter_elems = g.out_channels * g.filter_size();
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {  // idx = ((b·Cin + i)·H + ih)·W + iw
    const int64_t iw = idx % g.width, ih = (idx / g.width) % g.height, i = (idx / (g.width * g.height)) % g.in_channels;
    const int64_t b = idx / (g.in_channels * g.height * g.width);
    acc_t sum = 0;
    for (int64_t u = 0; u < g.kernel_h; ++u) {
      const int64_t oh = output_of_tap(ih, u, g.stride_h, g.pad_h, g.dilation_h, g.out_height);
      if (oh < 0) continue;
      for (int64_t v = 0; v < g.kernel_w; ++v) {
        const int64_t ow = output_of_tap(iw, v, g.stride_w, g.pad_w, g.dilation_w, g.out_width);
        if (ow < 0) continue;
        const int64_t l = oh * g.out_width + ow;
        const scalar_t* filter = filters + (b * R + region[b * L + l]) * filter_elems;
        for (int64_t o = 0; o < g.out_channels; ++o) {
          sum += static_cast<acc_t>(filter[((o * g.in_channels + i) * g.kernel_h + u) * g.kernel_w + v]) *
                 static_cast<acc_t>(grad[(b * g.out_channels + o) * L + l]);
        }
      }
    }
    grad_x[idx] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void dynamic_conv_grad_filters_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                                 const int64_t* __restrict__ region,
                                                 scalar_t* __restrict__ grad_filters, ConvGeometry g, int64_t R,
                                                 int64_t total) {
  const int64_t L = g.out_height * g.out_width;
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {  // idx = ((((b·R + r)·Cout + o)·Cin + i)·kh + u)·kw + v
    const int64_t v = idx % g.kernel_w, u = (idx / g.kernel_w) % g.kernel_h;
    const int64_t i = (idx / (g.kernel_w * g.kernel_h)) % g.in_channels;
    const int64_t o = (idx / g.filter_size()) % g.out_channels, r = (idx / (g.filter_size() * g.out_channels)) % R;
    const int64_t b = idx / (g.filter_size() * g.out_channels * R);
    const scalar_t* x_plane = x + (b * g.in_channels + i) * g.height * g.width;
    acc_t sum = 0;
    for (int64_t l = 0; l < L; ++l) {  // the pixels of region r only
      if (region[b * L + l] != r) continue;
      const int64_t ih = (l / g.out_width) * g.stride_h - g.pad_h + u * g.dilation_h;
      const int64_t iw = (l % g.out_width) * g.stride_w - g.pad_w + v * g.dilation_w;
      if (ih < 0 || ih >= g.height || iw < 0 || iw >= g.width) continue;
      sum += static_cast<acc_t>(grad[(b * g.out_channels + o) * L + l]) * static_cast<acc_t>(x_plane[ih * g.width + iw]);
    }
    grad_filters[idx] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void dynamic_conv_grad_guide_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                               const scalar_t* __restrict__ filters, const scalar_t* __restrict__ guide,
                                               scalar_t* __restrict__ grad_guide, ConvGeometry g, int64_t R,
                                               int64_t total) {
  const int64_t L = g.out_height * g.out_width, filter_elems = g.out_channels * g.filter_size();
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {  // idx = b·L + l
    const int64_t l = idx % L, b = idx / L;
    const scalar_t* xb = x + b * g.in_channels * g.height * g.width;
    // G_r = Σ_o grad[o]·(filter_r ∗ x)[o] at this pixel, for every region r.
    auto response = [&](int64_t r) {
      const scalar_t* filter = filters + (b * R + r) * filter_elems;
      acc_t sum = 0;
      for (int64_t o = 0; o < g.out_channels; ++o) {
        sum += static_cast<acc_t>(grad[(b * g.out_channels + o) * L + l]) *
               conv_entry<acc_t>(xb, filter, g, o, l / g.out_width, l % g.out_width);
      }
      return sum;
    };
    guide_gradient<acc_t>(guide + b * R * L + l, grad_guide + b * R * L + l, R, L, response);
  }
}

at::Tensor selected_regions(const at::Tensor& guide) {  // [B, L] int64
  const int64_t B = guide.size(0), R = guide.size(1), L = guide.size(2) * guide.size(3);
  auto region = at::empty({B, L}, guide.options().dtype(at::kLong));
  if (B * L == 0) return region;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, guide.scalar_type(), "selected_regions_cuda", [&] {
    ATTNKERN_LAUNCH(element_blocks(B * L), kElementThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    selected_regions_kernel<scalar_t>)(
        guide.const_data_ptr<scalar_t>(), region.mutable_data_ptr<int64_t>(), R, L, B * L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return region;
}

at::Tensor dynamic_region_conv_cuda(const at::Tensor& x_in, const at::Tensor& filters_in, const at::Tensor& guide_in,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto g = conv_geometry(x_in, filters_in, guide_in, stride, padding, dilation, "dynamic_region_conv");
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous(), filters = filters_in.contiguous(), guide = guide_in.contiguous();
  const int64_t B = x.size(0), R = filters.size(1);
  auto out = at::empty({B, g.out_channels, g.out_height, g.out_width}, x.options());
  if (out.numel() == 0) return out;
  auto region = selected_regions(guide);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynamic_region_conv_cuda", [&] {
    ATTNKERN_LAUNCH(element_blocks(out.numel()), kElementThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    dynamic_conv_forward_kernel<scalar_t, at::opmath_type<scalar_t>>)(
            x.const_data_ptr<scalar_t>(), filters.const_data_ptr<scalar_t>(), region.const_data_ptr<int64_t>(),
            out.mutable_data_ptr<scalar_t>(), g, R, out.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_region_conv_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& filters_in, const at::Tensor& guide_in,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto g = conv_geometry(x_in, filters_in, guide_in, stride, padding, dilation, "dynamic_region_conv_backward");
  const int64_t B = x_in.size(0), R = filters_in.size(1);
  check_conv_grad(grad_in, x_in, g, "dynamic_region_conv_backward");
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous(), filters = filters_in.contiguous(), guide = guide_in.contiguous();
  auto grad = grad_in.contiguous();
  auto grad_x = at::empty_like(x), grad_filters = at::empty_like(filters), grad_guide = at::empty_like(guide);
  auto region = selected_regions(guide);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynamic_region_conv_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (grad_x.numel() > 0) {
      ATTNKERN_LAUNCH(element_blocks(grad_x.numel()), kElementThreads, 0, stream,
                      dynamic_conv_grad_x_kernel<scalar_t, acc_t>)(
          grad.const_data_ptr<scalar_t>(), filters.const_data_ptr<scalar_t>(), region.const_data_ptr<int64_t>(),
          grad_x.mutable_data_ptr<scalar_t>(), g, R, grad_x.numel());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (grad_filters.numel() > 0) {
      ATTNKERN_LAUNCH(element_blocks(grad_filters.numel()), kElementThreads, 0, stream,
                      dynamic_conv_grad_filters_kernel<scalar_t, acc_t>)(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), region.const_data_ptr<int64_t>(),
          grad_filters.mutable_data_ptr<scalar_t>(), g, R, grad_filters.numel());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (grad_guide.numel() > 0) {
      const int64_t pixels = B * g.out_height * g.out_width;
      ATTNKERN_LAUNCH(element_blocks(pixels), kElementThreads, 0, stream,
                      dynamic_conv_grad_guide_kernel<scalar_t, acc_t>)(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), filters.const_data_ptr<scalar_t>(),
          guide.const_data_ptr<scalar_t>(), grad_guide.mutable_data_ptr<scalar_t>(), g, R, pixels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_filters, grad_guide};
}

}  // namespace

ATTNKERN_CUDA_KERNELS(m) {
  m.impl("region_assign", &region_assign_cuda);
  m.impl("region_assign_backward", &region_assign_backward_cuda);
  m.impl("dynamic_region_conv", &dynamic_region_conv_cuda);
  m.impl("dynamic_region_conv_backward", &dynamic_region_conv_backward_cuda);
}

}  // namespace region_conv
}  // namespace attnkern
