// Dynamic region-aware convolution (DRConv): region assignment, and the convolution that computes
// only the selected region's filter at each output pixel.
//
//   region_assign: out[b, c, p] = outputs[b, r*(b, p), c, p],  r* = argmax_r guide[b, r, p]
//   backward (DRConv's straight-through rule, not the derivative of the argmax):
//     ∂outputs[b, r, c, p] = grad[b, c, p] if r = r* else 0
//     ∂guide[b, r, p] = s_r·(G_r − Σ_r' s_r'·G_r'),  s = softmax_r(guide[b, :, p]),
//                       G_r = Σ_c grad[b, c, p]·outputs[b, r, c, p]
// Every element goes through the functions below, in the CPU loops and in one CUDA thread alike.
#pragma once

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

// ∂guide of every region at one pixel, written `stride` apart into guide_grad; response(r) gives G_r.
template <typename acc_t, typename scalar_t, typename Response>
ATTNKERN_HD inline void guide_gradient(const scalar_t* guide, scalar_t* guide_grad, int64_t regions, int64_t stride,
                                       Response response) {
  acc_t max = static_cast<acc_t>(guide[0]);
  for (int64_t r = 1; r < regions; ++r) {
    const acc_t g = static_cast<acc_t>(guide[r * stride]);
    max = max > g ? max : g;
  }
  acc_t total = 0, weighted = 0;  // Σ exp(g − max), Σ exp(g − max)·G
  for (int64_t r = 0; r < regions; ++r) {
    const acc_t e = exp(static_cast<acc_t>(guide[r * stride]) - max);
    total += e;
    weighted += e * response(r);
  }
  const acc_t mean_response = weighted / total;  // Σ s·G
  for (int64_t r = 0; r < regions; ++r) {
    const acc_t s = exp(static_cast<acc_t>(guide[r * stride]) - max) / total;
    guide_grad[r * stride] = static_cast<scalar_t>(s * (response(r) - mean_response));
  }
}

// ---- dynamic region convolution ----------------------------------------------------------------
//   out[b, o, p] = Σ_{i, u, v} filters[b, r*(b, p), o, i, u, v]·x[b, i, p_h·s_h − pad_h + u·d_h, p_w·s_w − pad_w + v·d_w]
// with x zero outside the image; its gradients are those of "every region's convolution, then
// region_assign" (x and filters through the selected region only; the guide through all of them).

struct ConvGeometry {
  int64_t in_channels, height, width;           // x [B, Cin, H, W]
  int64_t out_channels, kernel_h, kernel_w;     // filters [B, r, Cout, Cin, kh, kw]
  int64_t out_height, out_width;                // guide and output [.., H', W']
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  ATTNKERN_HD int64_t filter_size() const { return in_channels * kernel_h * kernel_w; }
};

// The input coordinate that tap `tap` of output coordinate `out` reads along one axis, or −1 where it
// falls in the zero padding. output_of_tap (below) is its inverse.
ATTNKERN_HD inline int64_t input_of_tap(int64_t out, int64_t tap, int64_t stride, int64_t pad, int64_t dilation,
                                        int64_t in_size) {
  const int64_t in = out * stride - pad + tap * dilation;
  return in >= 0 && in < in_size ? in : -1;
}

// Calls visit(k, source) for every tap k = (i·kh + u)·kw + v of output pixel (oh, ow), source being
// its offset in x (one sample, [Cin, H, W]), or −1 where the tap falls in the zero padding.
template <typename Visit>
ATTNKERN_HD inline void for_each_tap(const ConvGeometry& g, int64_t oh, int64_t ow, Visit visit) {
  int64_t k = 0;
  for (int64_t i = 0; i < g.in_channels; ++i) {
    for (int64_t u = 0; u < g.kernel_h; ++u) {
      const int64_t ih = input_of_tap(oh, u, g.stride_h, g.pad_h, g.dilation_h, g.height);
      for (int64_t v = 0; v < g.kernel_w; ++v, ++k) {
        const int64_t iw = input_of_tap(ow, v, g.stride_w, g.pad_w, g.dilation_w, g.width);
        visit(k, ih >= 0 && iw >= 0 ? (i * g.height + ih) * g.width + iw : int64_t(-1));
      }
    }
  }
}

// One output element: x points at sample b, filter at [Cout, K] of (b, region).
template <typename acc_t, typename scalar_t>
ATTNKERN_HD inline acc_t conv_entry(const scalar_t* x, const scalar_t* filter, const ConvGeometry& g, int64_t o,
                                    int64_t oh, int64_t ow) {
  const scalar_t* row = filter + o * g.filter_size();
  acc_t sum = 0;
  for_each_tap(g, oh, ow, [&](int64_t k, int64_t source) {
    if (source >= 0) sum += static_cast<acc_t>(row[k]) * static_cast<acc_t>(x[source]);
  });
  return sum;
}

// The output coordinate whose tap `tap` reads input coordinate `in`, or −1 (none, or out of range).
ATTNKERN_HD inline int64_t output_of_tap(int64_t in, int64_t tap, int64_t stride, int64_t pad, int64_t dilation,
                                         int64_t out_size) {
  const int64_t shifted = in + pad - tap * dilation;
  if (shifted < 0 || shifted % stride != 0) return -1;
  const int64_t out = shifted / stride;
  return out < out_size ? out : -1;
}

}  // namespace region_conv
}  // namespace attnkern
