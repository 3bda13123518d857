// CPU kernels of the region_conv family: region assignment pixel by pixel through region_conv.h;
// the dynamic region convolution over BLAS (below).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "common/dtype.h"
#include "region_conv/region_conv.h"

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
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / HW, p = i % HW;
        const int64_t selected = selected_region(g_ptr + b * R * HW + p, R, HW);
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t c = 0; c < C; ++c) {
            go_ptr[((b * R + r) * C + c) * HW + p] = r == selected ? d_ptr[(b * C + c) * HW + p] : scalar_t(0);
          }
        }
        const scalar_t* grad_p = d_ptr + b * C * HW + p;
        const scalar_t* outputs_p = o_ptr + b * R * C * HW + p;
        guide_gradient<acc_t>(g_ptr + b * R * HW + p, gg_ptr + b * R * HW + p, R, HW, [&](int64_t r) {
          return region_response<acc_t>(grad_p, outputs_p, r, C, C * HW, HW);
        });
      }
    });
  });
  return {grad_outputs, grad_guide};
}

// ---- dynamic region convolution -------------------------------------------------------------
// One sample per task. Its output pixels are sorted by selected region and their input patches
// gathered in that order ([L, K] rows, K = Cin·kh·kw), so each region's pixels are one contiguous
// slice: one BLAS product per region, on that region's pixels only (the seed convolves every region
// everywhere).

// A sample's pixels sorted by selected region: order[j] is the j-th pixel, region r owns
// order[start[r] .. start[r + 1]).
struct RegionOrder {
  std::vector<int64_t> order, start;
};

template <typename scalar_t>
RegionOrder sort_by_region(const scalar_t* guide, int64_t regions, int64_t L) {
  std::vector<int64_t> region(L);
  RegionOrder sorted{std::vector<int64_t>(L), std::vector<int64_t>(regions + 1, 0)};
  for (int64_t l = 0; l < L; ++l) {
    region[l] = selected_region(guide + l, regions, L);
    ++sorted.start[region[l] + 1];
  }
  for (int64_t r = 0; r < regions; ++r) sorted.start[r + 1] += sorted.start[r];
  std::vector<int64_t> next(sorted.start.begin(), sorted.start.end() - 1);
  for (int64_t l = 0; l < L; ++l) sorted.order[next[region[l]]++] = l;
  return sorted;
}

// patches[j] = the input patch of pixel order[j] ([L, K]).
template <typename scalar_t>
at::Tensor gather_patches(const at::Tensor& x, int64_t b, const ConvGeometry& g, const RegionOrder& sorted) {
  const int64_t L = g.out_height * g.out_width, K = g.filter_size();
  auto patches = at::empty({L, K}, x.options());
  const scalar_t* x_b = x.const_data_ptr<scalar_t>() + b * g.in_channels * g.height * g.width;
  scalar_t* p = patches.mutable_data_ptr<scalar_t>();
  for (int64_t j = 0; j < L; ++j) {
    const int64_t l = sorted.order[j];
    for (int64_t k = 0; k < K; ++k) {
      const int64_t source = patch_source(g, l / g.out_width, l % g.out_width, k);
      p[j * K + k] = source < 0 ? scalar_t(0) : x_b[source];
    }
  }
  return patches;
}

at::Tensor dynamic_region_conv_cpu(const at::Tensor& x_in, const at::Tensor& filters_in, const at::Tensor& guide_in,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto g = conv_geometry(x_in, filters_in, guide_in, stride, padding, dilation, "dynamic_region_conv");
  // Half types compute in float32 (the guide too: the upcast keeps its order and ties).
  auto x = to_compute_dtype(x_in).contiguous(), filters = to_compute_dtype(filters_in).contiguous();
  auto guide = to_compute_dtype(guide_in).contiguous();
  const int64_t B = x.size(0), R = filters.size(1), L = g.out_height * g.out_width, C = g.out_channels;
  auto out = at::empty({B, C, g.out_height, g.out_width}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dynamic_region_conv_cpu", [&] {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto sorted = sort_by_region(guide.const_data_ptr<scalar_t>() + b * R * L, R, L);
        auto patches = gather_patches<scalar_t>(x, b, g, sorted);
        auto out_sorted = at::empty({L, C}, x.options());  // row j: output of pixel order[j]
        for (int64_t r = 0; r < R; ++r) {
          const int64_t n = sorted.start[r + 1] - sorted.start[r];
          if (n == 0) continue;
          auto slice = out_sorted.narrow(0, sorted.start[r], n);
          at::mm_out(slice, patches.narrow(0, sorted.start[r], n), filters[b][r].reshape({C, -1}).t());
        }
        const scalar_t* src = out_sorted.const_data_ptr<scalar_t>();
        scalar_t* dst = out.mutable_data_ptr<scalar_t>() + b * C * L;
        for (int64_t j = 0; j < L; ++j) {
          for (int64_t c = 0; c < C; ++c) dst[c * L + sorted.order[j]] = src[j * C + c];
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
  const int64_t C = g.out_channels;
  check_shape(grad_in, "dynamic_region_conv_backward: grad", {B, C, g.out_height, g.out_width});
  auto x = to_compute_dtype(x_in).contiguous(), filters = to_compute_dtype(filters_in).contiguous();
  auto grad = to_compute_dtype(grad_in).contiguous();
  auto guide = to_compute_dtype(guide_in).contiguous();
  auto grad_x = at::zeros_like(x), grad_filters = at::zeros_like(filters), grad_guide = at::empty_like(guide);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dynamic_region_conv_backward_cpu", [&] {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto sorted = sort_by_region(guide.const_data_ptr<scalar_t>() + b * R * L, R, L);
        auto patches = gather_patches<scalar_t>(x, b, g, sorted);
        auto grad_sorted = at::empty({L, C}, x.options());  // row j: grad at pixel order[j]
        {
          const scalar_t* src = grad.const_data_ptr<scalar_t>() + b * C * L;
          scalar_t* dst = grad_sorted.mutable_data_ptr<scalar_t>();
          for (int64_t j = 0; j < L; ++j) {
            for (int64_t c = 0; c < C; ++c) dst[j * C + c] = src[c * L + sorted.order[j]];
          }
        }
        auto filters_b = filters[b].reshape({R, C, K});
        auto grad_patches = at::empty({L, K}, x.options());
        for (int64_t r = 0; r < R; ++r) {
          const int64_t n = sorted.start[r + 1] - sorted.start[r];
          if (n == 0) continue;
          auto grad_r = grad_sorted.narrow(0, sorted.start[r], n);  // [n, Cout]
          auto grad_filter = grad_filters[b][r].view({C, K});
          at::mm_out(grad_filter, grad_r.t(), patches.narrow(0, sorted.start[r], n));
          auto grad_patch = grad_patches.narrow(0, sorted.start[r], n);
          at::mm_out(grad_patch, grad_r, filters_b[r]);
        }
        scalar_t* grad_x_b = grad_x.mutable_data_ptr<scalar_t>() + b * g.in_channels * g.height * g.width;
        const scalar_t* gp = grad_patches.const_data_ptr<scalar_t>();
        for (int64_t j = 0; j < L; ++j) {  // the adjoint of gather_patches
          const int64_t l = sorted.order[j];
          for (int64_t k = 0; k < K; ++k) {
            const int64_t source = patch_source(g, l / g.out_width, l % g.out_width, k);
            if (source >= 0) grad_x_b[source] += gp[j * K + k];
          }
        }
        // The guide needs every region's response G_r = Σ_o grad·(filter_r ∗ x) at every pixel: one
        // product per sample, [L, K]·[K, R·Cout], reduced against grad right away.
        auto responses = (at::mm(patches, filters_b.view({R * C, K}).t()).view({L, R, C}) * grad_sorted.unsqueeze(1))
                             .sum(2)
                             .contiguous();  // [L, R]
        const scalar_t* resp = responses.const_data_ptr<scalar_t>();
        const scalar_t* guide_b = guide.const_data_ptr<scalar_t>() + b * R * L;
        scalar_t* grad_guide_b = grad_guide.mutable_data_ptr<scalar_t>() + b * R * L;
        for (int64_t j = 0; j < L; ++j) {
          const int64_t l = sorted.order[j];
          guide_gradient<scalar_t>(guide_b + l, grad_guide_b + l, R, L, [&](int64_t r) { return resp[j * R + r]; });
        }
      }
    });
  });
  return {grad_x.to(x_in.scalar_type()), grad_filters.to(filters_in.scalar_type()),
          grad_guide.to(guide_in.scalar_type())};
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
