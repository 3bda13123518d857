// CPU kernels of the region_conv family, pixel by pixel through region_conv.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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
        guide_gradient<acc_t>(g_ptr + b * R * HW + p, d_ptr + b * C * HW + p, o_ptr + b * R * C * HW + p,
                              gg_ptr + b * R * HW + p, R, C, HW, C * HW);
      }
    });
  });
  return {grad_outputs, grad_guide};
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CPU, m) {
  m.impl("region_assign", &region_assign_cpu);
  m.impl("region_assign_backward", &region_assign_backward_cpu);
}

}  // namespace region_conv
}  // namespace attnkern
