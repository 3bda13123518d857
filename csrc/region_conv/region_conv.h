// Dynamic region-aware convolution (DRConv): region assignment.
//
//   region_assign: out[b, c, p] = outputs[b, r*(b, p), c, p],  r* = argmax_r guide[b, r, p]
//   backward (DRConv's straight-through rule, not the derivative of the argmax):
//     ∂outputs[b, r, c, p] = grad[b, c, p] if r = r* else 0
//     ∂guide[b, r, p] = s_r·(G_r − Σ_r' s_r'·G_r'),  s = softmax_r(guide[b, :, p]),
//                       G_r = Σ_c grad[b, c, p]·outputs[b, r, c, p]
// Every element goes through the functions below, in the CPU loops and in one CUDA thread alike.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace attnkern {
namespace region_conv {

template <typename T>
ATTNKERN_HD inline bool is_nan(T v) { return v != v; }

// The region a pixel selects, as torch.argmax picks it: the first maximum; a NaN counts as the
// maximum (the first NaN wins). guide points at region 0 of the pixel, regions `stride` apart.
template <typename scalar_t>
ATTNKERN_HD inline int64_t selected_region(const scalar_t* guide, int64_t regions, int64_t stride) {
  int64_t best = 0;
  for (int64_t r = 1; r < regions; ++r) {
    const scalar_t v = guide[r * stride], b = guide[best * stride];
    if (is_nan(b)) break;
    if (is_nan(v) || v > b) best = r;
  }
  return best;
}

// G_r = Σ_c grad[c]·outputs[r, c] at one pixel: grad and outputs point at channel 0 (region 0),
// channels `pixel_stride` apart, regions `region_stride` apart in outputs.
template <typename acc_t, typename scalar_t>
ATTNKERN_HD inline acc_t region_response(const scalar_t* grad, const scalar_t* outputs, int64_t r, int64_t C,
                                         int64_t region_stride, int64_t pixel_stride) {
  acc_t sum = 0;
  for (int64_t c = 0; c < C; ++c) {
    sum += static_cast<acc_t>(grad[c * pixel_stride]) *
           static_cast<acc_t>(outputs[r * region_stride + c * pixel_stride]);
  }
  return sum;
}

// ∂guide of every region at one pixel, written `stride` apart into guide_grad.
template <typename acc_t, typename scalar_t>
ATTNKERN_HD inline void guide_gradient(const scalar_t* guide, const scalar_t* grad, const scalar_t* outputs,
                                       scalar_t* guide_grad, int64_t regions, int64_t C, int64_t stride,
                                       int64_t region_stride) {
  acc_t max = static_cast<acc_t>(guide[0]);
  for (int64_t r = 1; r < regions; ++r) max = max > static_cast<acc_t>(guide[r * stride]) ? max : static_cast<acc_t>(guide[r * stride]);
  acc_t total = 0, weighted = 0;  // Σ exp(g − max), Σ exp(g − max)·G
  for (int64_t r = 0; r < regions; ++r) {
    const acc_t e = exp(static_cast<acc_t>(guide[r * stride]) - max);
    total += e;
    weighted += e * region_response<acc_t>(grad, outputs, r, C, region_stride, stride);
  }
  const acc_t mean_response = weighted / total;  // Σ s·G
  for (int64_t r = 0; r < regions; ++r) {
    const acc_t s = exp(static_cast<acc_t>(guide[r * stride]) - max) / total;
    guide_grad[r * stride] =
        static_cast<scalar_t>(s * (region_response<acc_t>(grad, outputs, r, C, region_stride, stride) - mean_response));
  }
}

// ---- host side ------------------------------------------------------------------------------

void check_region_assign_inputs(const at::Tensor& outputs, const at::Tensor& guide, const char* op);
void check_region_assign_grad(const at::Tensor& grad, const at::Tensor& outputs);

}  // namespace region_conv
}  // namespace attnkern
