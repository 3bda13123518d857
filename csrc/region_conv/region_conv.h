// Dynamic region-aware convolution (DRConv): region assignment, and the convolution that computes
// only the selected region's filter at each output pixel.
//
//   region_assign: out[b, c, p] = outputs[b, r*(b, p), c, p],  r* = argmax_r guide[b, r, p]
//   backward (DRConv's straight-through rule, not the derivative of the argmax):
//     ∂outputs[b, r, c, p] = grad[b, c, p] if r = r* else 0
//     ∂guide[b, r, p] = s_r·(G_r − Σ_r' s_r'·G_r'),  s = softmax_r(guide[b, :, p]),
//                       G_r = Σ_c grad[b, c, p]·outputs[b, r, c, p]
// Every element goes through the functions below, in the CPU loops and in the CUDA threads alike.
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
template <typename scalar_t, typename index_t>
ATTNKERN_HD inline index_t selected_region(const scalar_t* guide, index_t regions, index_t stride) {
  index_t best = 0;
  for (index_t r = 1; r < regions; ++r) {
    const scalar_t v = guide[r * stride], b = guide[best * stride];
    if (is_nan(b)) break;
    if (is_nan(v) || v > b) best = r;
  }
  return best;
}

// One region at one pixel, over the channels c = first, first + step, … < C (`pixel_stride` apart): the
// outputs' straight-through gradient, grad_outputs[c] = grad[c] if the region is the selected one else 0,
// and the share of G_r = Σ_c grad[c]·outputs[c] these channels hold. The CPU walks every channel (first
// 0, step 1); a CUDA block splits them over its warps (first = the warp's slice).
template <typename acc_t, typename scalar_t, typename index_t>
ATTNKERN_HD inline acc_t straight_through_channels(const scalar_t* grad, const scalar_t* outputs,
                                                   scalar_t* grad_outputs, bool selected, index_t first, index_t C,
                                                   index_t step, index_t pixel_stride) {
  acc_t sum = 0;
  for (index_t c = first; c < C; c += step) {
    const scalar_t g = grad[c * pixel_stride];
    sum += static_cast<acc_t>(g) * static_cast<acc_t>(outputs[c * pixel_stride]);
    grad_outputs[c * pixel_stride] = selected ? g : scalar_t(0);
  }
  return sum;
}

// ∂guide of every region at one pixel, written `stride` apart into guide_grad. response(r) gives G_r and
// is called twice per region: pass the responses computed once and stored (a load), not their sums.
template <typename acc_t, typename scalar_t, typename index_t, typename Response>
ATTNKERN_HD inline void guide_gradient(const scalar_t* guide, scalar_t* guide_grad, index_t regions, index_t stride,
                                       Response response) {
  acc_t max = static_cast<acc_t>(guide[0]);
  for (index_t r = 1; r < regions; ++r) {
    const acc_t g = static_cast<acc_t>(guide[r * stride]);
    max = max > g ? max : g;
  }
  acc_t total = 0, weighted = 0;  // Σ exp(g − max), Σ exp(g − max)·G
  for (index_t r = 0; r < regions; ++r) {
    const acc_t e = exp(static_cast<acc_t>(guide[r * stride]) - max);
    total += e;
    weighted += e * response(r);
  }
  const acc_t mean_response = weighted / total;  // Σ s·G
  for (index_t r = 0; r < regions; ++r) {
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
// falls in the zero padding. output_of_tap (below) is its inverse. index_t: int64_t on the CPU, int32_t
// in the CUDA kernels (whose host code checks that the sizes fit).
template <typename index_t>
ATTNKERN_HD inline index_t input_of_tap(index_t out, index_t tap, index_t stride, index_t pad, index_t dilation,
                                        index_t in_size) {
  const index_t in = out * stride - pad + tap * dilation;
  return in >= 0 && in < in_size ? in : index_t(-1);
}

// The output coordinate whose tap `tap` reads input coordinate `in`, or −1 (none, or out of range).
template <typename index_t>
ATTNKERN_HD inline index_t output_of_tap(index_t in, index_t tap, index_t stride, index_t pad, index_t dilation,
                                         index_t out_size) {
  const index_t shifted = in + pad - tap * dilation;
  if (shifted < 0) return -1;
  const index_t out = stride == 1 ? shifted : shifted / stride;  // stride 1 (the common case): no division
  if (out * stride != shifted) return -1;
  return out < out_size ? out : index_t(-1);
}


// ---- the 32-bit tap walk of the CUDA products (region_conv_cuda.cu) ------------------------------
// X[k, p], the im2col matrix (x at tap k = (i·kh + u)·kw + v of output pixel p, 0 in the padding), read
// one tap and pixel at a time with 32-bit index math and no division in the loops.

// n / d and n % d for 0 <= n < 2^31 by a multiply-high, an add and a shift (Granlund–Montgomery), d >= 1.
struct Divisor {
  uint32_t d = 1, mul = 1, shift = 0;
  Divisor() = default;
  explicit Divisor(int64_t divisor) : d(static_cast<uint32_t>(divisor)) {
    while ((uint64_t(1) << shift) < d) ++shift;
    mul = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  ATTNKERN_HD int div(int n) const {
    const uint32_t high = static_cast<uint32_t>((uint64_t(static_cast<uint32_t>(n)) * mul) >> 32);
    return static_cast<int>((high + static_cast<uint32_t>(n)) >> shift);
  }
};

// ConvGeometry in 32-bit integers, with the divisors of the walk and the decomposition of its step.
struct ConvGeometry32 {
  int in_channels, height, width, out_channels, kernel_h, kernel_w, out_height, out_width;
  int stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int K, L;                                                        // Cin·kh·kw taps, H'·W' output pixels
  Divisor by_out_width, by_taps, by_kernel_w, by_width, by_plane;  // W', kh·kw, kw, W, H·W
  int step, step_i, step_u, step_v;  // a Tap's advance: step = (step_i·kh + step_u)·kw + step_v taps
};

// g narrowed (the caller checks that every per-sample size fits in 31 bits), the walk stepping `step` taps.
// Strides and dilations beyond the padded image only matter through input_of_tap and output_of_tap, whose
// 32-bit products they must not overflow: they are clamped where the result is the same.
inline ConvGeometry32 narrow_geometry(const ConvGeometry& g, int step) {
  auto clamp = [](int64_t v, int64_t limit) { return static_cast<int>(v < limit ? v : limit); };
  const int64_t span_h = g.height + 2 * g.pad_h + 1, span_w = g.width + 2 * g.pad_w + 1, taps = g.kernel_h * g.kernel_w;
  ConvGeometry32 n;
  n.in_channels = static_cast<int>(g.in_channels);
  n.height = static_cast<int>(g.height);
  n.width = static_cast<int>(g.width);
  n.out_channels = static_cast<int>(g.out_channels);
  n.kernel_h = static_cast<int>(g.kernel_h);
  n.kernel_w = static_cast<int>(g.kernel_w);
  n.out_height = static_cast<int>(g.out_height);
  n.out_width = static_cast<int>(g.out_width);
  n.stride_h = clamp(g.stride_h, span_h);
  n.stride_w = clamp(g.stride_w, span_w);
  n.pad_h = static_cast<int>(g.pad_h);
  n.pad_w = static_cast<int>(g.pad_w);
  n.dilation_h = clamp(g.dilation_h, span_h);
  n.dilation_w = clamp(g.dilation_w, span_w);
  n.K = static_cast<int>(g.filter_size());
  n.L = static_cast<int>(g.out_height * g.out_width);
  n.by_out_width = Divisor(g.out_width);
  n.by_taps = Divisor(taps);
  n.by_kernel_w = Divisor(g.kernel_w);
  n.by_width = Divisor(g.width);
  n.by_plane = Divisor(g.height * g.width);
  n.step = step;
  n.step_i = static_cast<int>(step / taps);
  n.step_u = static_cast<int>(step % taps / g.kernel_w);
  n.step_v = static_cast<int>(step % taps % g.kernel_w);
  return n;
}

// Tap k = (i·kh + u)·kw + v, advanced g.step taps at a time by carries instead of divisions.
struct Tap {
  int k, i, u, v;
  ATTNKERN_HD Tap(int tap, const ConvGeometry32& g) : k(tap) {
    i = g.by_taps.div(tap);
    const int uv = tap - i * g.kernel_h * g.kernel_w;
    u = g.by_kernel_w.div(uv);
    v = uv - u * g.kernel_w;
  }
  ATTNKERN_HD void advance(const ConvGeometry32& g) {
    k += g.step;
    v += g.step_v;
    if (v >= g.kernel_w) v -= g.kernel_w, ++u;
    u += g.step_u;
    if (u >= g.kernel_h) u -= g.kernel_h, ++i;
    i += g.step_i;
  }
};

// An output pixel's coordinates, or none (oh = −1: past a tile's end).
struct Pixel {
  int oh = -1, ow = -1;
  Pixel() = default;
  ATTNKERN_HD Pixel(int l, const ConvGeometry32& g) : oh(g.by_out_width.div(l)), ow(l - oh * g.out_width) {}
};

// The offset in x (one sample, [Cin, H, W]) of X[tap, pixel], or −1 (padding, no pixel, or tap k ≥ K).
ATTNKERN_HD inline int im2col_source(const ConvGeometry32& g, const Tap& tap, const Pixel& pixel) {
  if (pixel.oh < 0 || tap.k >= g.K) return -1;
  const int ih = input_of_tap(pixel.oh, tap.u, g.stride_h, g.pad_h, g.dilation_h, g.height);
  const int iw = input_of_tap(pixel.ow, tap.v, g.stride_w, g.pad_w, g.dilation_w, g.width);
  return ih >= 0 && iw >= 0 ? (tap.i * g.height + ih) * g.width + iw : -1;
}

template <typename acc_t, typename scalar_t>
ATTNKERN_HD inline acc_t im2col_entry(const scalar_t* x, const ConvGeometry32& g, const Tap& tap, const Pixel& pixel) {
  const int source = im2col_source(g, tap, pixel);
  return source >= 0 ? static_cast<acc_t>(x[source]) : acc_t(0);
}

}  // namespace region_conv
}  // namespace attnkern
