// CPU kernels of the region_conv family: region assignment pixel by pixel through region_conv.h;
// the dynamic region convolution over BLAS (below).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "common/cpu_parallel.h"
#include "common/dtype.h"
#include "region_conv/region_conv.h"
#include "region_conv/region_conv_checks.h"

namespace attnkern {
namespace region_conv {
namespace {

at::Tensor region_assign_cpu(const at::Tensor& outputs_in, const at::Tensor& guide_in) {
  check_region_assign_inputs(outputs_in, guide_in, "region_assign");
  auto outputs = outputs_in.contiguous(), guide = guide_in.contiguous();
  const int64_t B = outputs.size(0), R = outputs.size(1), C = outputs.size(2), HW = outputs.size(3) * outputs.size(4);
  auto out = at::empty({B, C, outputs.size(3), outputs.size(4)}, outputs.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, outputs.scalar_type(), "region_assign_cpu", [&] {
    const scalar_t* o_ptr = outputs.const_data_ptr<scalar_t>();
    const scalar_t* g_ptr = guide.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * HW, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {  // i = b·HW + p
        const int64_t b = i / HW, p = i % HW;
        const int64_t r = selected_region(g_ptr + b * R * HW + p, R, HW);
        for (int64_t c = 0; c < C; ++c) out_ptr[(b * C + c) * HW + p] = o_ptr[((b * R + r) * C + c) * HW + p];
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> region_assign_backward_cpu(const at::Tensor& grad_in, const at::Tensor& outputs_in,
                                                              const at::Tensor& guide_in) {
  check_region_assign_inputs(outputs_in, guide_in, "region_assign_backward");
  auto outputs = outputs_in.contiguous(), guide = guide_in.contiguous();
  const int64_t B = outputs.size(0), R = outputs.size(1), C = outputs.size(2), HW = outputs.size(3) * outputs.size(4);
  check_region_assign_grad(grad_in, outputs);
  auto grad = grad_in.contiguous();
  auto grad_outputs = at::empty_like(outputs), grad_guide = at::empty_like(guide);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, outputs.scalar_type(), "region_assign_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* o_ptr = outputs.const_data_ptr<scalar_t>();
    const scalar_t* g_ptr = guide.const_data_ptr<scalar_t>();
    const scalar_t* d_ptr = grad.const_data_ptr<scalar_t>();
    scalar_t* go_ptr = grad_outputs.mutable_data_ptr<scalar_t>();
    scalar_t* gg_ptr = grad_guide.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * HW, 256, [&](int64_t i0, int64_t i1) {
      std::vector<acc_t> responses(R);  // G_r of the pixel, each computed once
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / HW, p = i % HW;
        const int64_t selected = selected_region(g_ptr + b * R * HW + p, R, HW);
        for (int64_t r = 0; r < R; ++r) {
          const int64_t at = (b * R + r) * C * HW + p;
          responses[r] = straight_through_channels<acc_t>(d_ptr + b * C * HW + p, o_ptr + at, go_ptr + at,
                                                          r == selected, int64_t(0), C, int64_t(1), HW);
        }
        guide_gradient<acc_t>(g_ptr + b * R * HW + p, gg_ptr + b * R * HW + p, R, HW,
                              [&](int64_t r) { return responses[r]; });
      }
    });
  });
  return {grad_outputs, grad_guide};
}

// ---- dynamic region convolution -------------------------------------------------------------
// One sample per task: im2col of the sample, its pixels grouped by selected region, and one BLAS
// product per region on that region's columns only (the seed computes every region everywhere). The
// columns walk the taps through region_conv.h's input_of_tap/output_of_tap, as the CUDA kernels do.

// The pixels of sample b grouped by region: pixels[region] as int64 index tensors.
template <typename scalar_t>
std::vector<at::Tensor> pixels_by_region(const scalar_t* guide, int64_t regions, int64_t L) {
  std::vector<std::vector<int64_t>> groups(regions);
  for (int64_t l = 0; l < L; ++l) groups[selected_region(guide + l, regions, L)].push_back(l);
  std::vector<at::Tensor> pixels;
  for (auto& group : groups) {
    pixels.push_back(at::tensor(group, at::TensorOptions().dtype(at::kLong)));
  }
  return pixels;
}

// cols [K, L] of one sample (x [Cin, H, W]): cols[k, l] = x at tap k of output pixel l, 0 in the
// padding — the taps of for_each_tap, walked tap by tap so that each row of cols is written in order.
template <typename T>
void im2col(const T* x, const ConvGeometry& g, T* cols) {
  const int64_t L = g.out_height * g.out_width;
  for (int64_t i = 0, k = 0; i < g.in_channels; ++i) {
    for (int64_t u = 0; u < g.kernel_h; ++u) {
      for (int64_t v = 0; v < g.kernel_w; ++v, ++k) {
        for (int64_t oh = 0; oh < g.out_height; ++oh) {
          T* dst = cols + k * L + oh * g.out_width;
          const int64_t ih = input_of_tap(oh, u, g.stride_h, g.pad_h, g.dilation_h, g.height);
          const T* src = x + (i * g.height + (ih < 0 ? 0 : ih)) * g.width;
          for (int64_t ow = 0; ow < g.out_width; ++ow) {
            const int64_t iw = input_of_tap(ow, v, g.stride_w, g.pad_w, g.dilation_w, g.width);
            dst[ow] = ih >= 0 && iw >= 0 ? src[iw] : T(0);
          }
        }
      }
    }
  }
}

// The adjoint of im2col: grad_x [Cin, H, W] of one sample from grad_cols [K, L], each input element
// gathering the taps that read it (output_of_tap, as the CUDA kernel does); the output coordinates
// are tabulated per tap, so the inner loop does no division.
template <typename T>
void col2im(const T* cols, const ConvGeometry& g, T* x) {
  const int64_t L = g.out_height * g.out_width;
  std::vector<int64_t> oh_of(g.kernel_h * g.height), ow_of(g.kernel_w * g.width);
  for (int64_t u = 0; u < g.kernel_h; ++u) {
    for (int64_t ih = 0; ih < g.height; ++ih) {
      oh_of[u * g.height + ih] = output_of_tap(ih, u, g.stride_h, g.pad_h, g.dilation_h, g.out_height);
    }
  }
  for (int64_t v = 0; v < g.kernel_w; ++v) {
    for (int64_t iw = 0; iw < g.width; ++iw) {
      ow_of[v * g.width + iw] = output_of_tap(iw, v, g.stride_w, g.pad_w, g.dilation_w, g.out_width);
    }
  }
  for (int64_t i = 0; i < g.in_channels; ++i) {
    for (int64_t ih = 0; ih < g.height; ++ih) {
      T* dst = x + (i * g.height + ih) * g.width;
      for (int64_t iw = 0; iw < g.width; ++iw) dst[iw] = T(0);
      for (int64_t u = 0; u < g.kernel_h; ++u) {
        const int64_t oh = oh_of[u * g.height + ih];
        if (oh < 0) continue;
        for (int64_t v = 0; v < g.kernel_w; ++v) {
          const T* src = cols + ((i * g.kernel_h + u) * g.kernel_w + v) * L + oh * g.out_width;
          const int64_t* ow = ow_of.data() + v * g.width;
          for (int64_t iw = 0; iw < g.width; ++iw) {
            if (ow[iw] >= 0) dst[iw] += src[ow[iw]];
          }
        }
      }
    }
  }
}

// im2col of sample b of x (contiguous, [B, Cin, H, W] in acc_t): [Cin·kh·kw, L].
template <typename acc_t>
at::Tensor sample_columns(const at::Tensor& x, int64_t b, const ConvGeometry& g) {
  auto cols = at::empty({g.filter_size(), g.out_height * g.out_width}, x.options());
  im2col(x.const_data_ptr<acc_t>() + b * g.in_channels * g.height * g.width, g, cols.mutable_data_ptr<acc_t>());
  return cols;
}

at::Tensor dynamic_region_conv_cpu(const at::Tensor& x_in, const at::Tensor& filters_in, const at::Tensor& guide_in,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto g = conv_geometry(x_in, filters_in, guide_in, stride, padding, dilation, "dynamic_region_conv");
  auto x = to_compute_dtype(x_in).contiguous(), filters = to_compute_dtype(filters_in).contiguous();
  auto guide = guide_in.contiguous();
  const int64_t B = x.size(0), R = filters.size(1), L = g.out_height * g.out_width;
  auto out = at::empty({B, g.out_channels, g.out_height, g.out_width}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, guide.scalar_type(), "dynamic_region_conv_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;  // x's compute dtype
    parallel_for_aten(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        auto pixels = pixels_by_region(guide.const_data_ptr<scalar_t>() + b * R * L, R, L);
        auto cols = sample_columns<acc_t>(x, b, g);
        auto out_b = out[b].view({g.out_channels, L});
        for (int64_t r = 0; r < R; ++r) {
          if (pixels[r].numel() == 0) continue;
          auto filter = filters[b][r].reshape({g.out_channels, g.filter_size()});
          out_b.index_copy_(1, pixels[r], at::mm(filter, cols.index_select(1, pixels[r])));
        }
      }
    });
  });
  return out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_region_conv_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& filters_in, const at::Tensor& guide_in,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto g = conv_geometry(x_in, filters_in, guide_in, stride, padding, dilation, "dynamic_region_conv_backward");
  const int64_t B = x_in.size(0), R = filters_in.size(1), L = g.out_height * g.out_width, K = g.filter_size();
  check_conv_grad(grad_in, x_in, g, "dynamic_region_conv_backward");
  auto x = to_compute_dtype(x_in).contiguous(), filters = to_compute_dtype(filters_in).contiguous();
  auto grad = to_compute_dtype(grad_in).contiguous();
  auto guide = guide_in.contiguous();
  auto grad_x = at::empty_like(x), grad_filters = at::zeros_like(filters), grad_guide = at::empty_like(guide);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, guide.scalar_type(), "dynamic_region_conv_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    parallel_for_aten(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* guide_b = guide.const_data_ptr<scalar_t>() + b * R * L;
        auto pixels = pixels_by_region(guide_b, R, L);
        auto cols = sample_columns<acc_t>(x, b, g);
        auto grad_b = grad[b].view({g.out_channels, L});
        auto filters_b = filters[b].reshape({R, g.out_channels, K});
        auto grad_cols = at::zeros_like(cols);
        for (int64_t r = 0; r < R; ++r) {
          if (pixels[r].numel() == 0) continue;
          auto grad_r = grad_b.index_select(1, pixels[r]);  // [Cout, n_r]
          grad_filters[b][r].view({g.out_channels, K}).copy_(at::mm(grad_r, cols.index_select(1, pixels[r]).t()));
          grad_cols.index_copy_(1, pixels[r], at::mm(filters_b[r].t(), grad_r));
        }
        col2im(grad_cols.const_data_ptr<acc_t>(), g,
               grad_x.mutable_data_ptr<acc_t>() + b * g.in_channels * g.height * g.width);
        // The guide needs every region's response G_r = Σ_o grad·(filter_r ∗ x) at every pixel: one
        // product per sample, [R·Cout, K]·[K, L], reduced against grad right away.
        auto responses = (at::mm(filters_b.view({R * g.out_channels, K}), cols).view({R, g.out_channels, L}) *
                          grad_b.unsqueeze(0))
                             .sum(1)
                             .to(at::toOpMathType(guide.scalar_type()))
                             .contiguous();
        const acc_t* resp = responses.const_data_ptr<acc_t>();
        scalar_t* grad_guide_b = grad_guide.mutable_data_ptr<scalar_t>() + b * R * L;
        for (int64_t l = 0; l < L; ++l) {
          guide_gradient<acc_t>(guide_b + l, grad_guide_b + l, R, L, [&](int64_t r) { return resp[r * L + l]; });
        }
      }
    });
  });
  return {grad_x.to(x_in.scalar_type()), grad_filters.to(filters_in.scalar_type()), grad_guide};
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CPU, m) {
  m.impl("region_assign", &region_assign_cpu);
  m.impl("region_assign_backward", &region_assign_backward_cpu);
  m.impl("dynamic_region_conv", &dynamic_region_conv_cpu);
  m.impl("dynamic_region_conv_backward", &dynamic_region_conv_backward_cpu);
}

}  // namespace region_conv
}  // namespace attnkern
