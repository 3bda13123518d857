// Criss-cross attention (CCNet): each pixel (h, w) attends to the P = H + W − 1 positions of its
// row and column, itself once.
//
// Position layout of a pixel's list (the dim of size P in energies and attention maps):
//   p <  W   row position (h, p)                 (the pixel itself at p = w)
//   p >= W   column position (column_row(p − W, h), w): the H − 1 rows other than h, in order
//
//   affinity:              e[p, h, w]   = Σ_c q[c, h, w]·k[c, pos(p; h, w)]
//   aggregate:             out[c, h, w] = Σ_p a[p, h, w]·v[c, pos(p; h, w)]
//   aggregate_transposed:  y[c, y, x]   = Σ over pixels (h, w) whose list holds (y, x) of a[p, h, w]·g[c, h, w]
//                          — the adjoint of aggregate in v (and of affinity in k).
// Gradients: affinity → (aggregate(g, k), aggregate_transposed(g, q)); aggregate → (affinity(g, v),
// aggregate_transposed(a, g)); aggregate_transposed → (affinity(x, g), aggregate(a, g)).
//
// Affinity and aggregation compute every element through the functions below, in the CPU loops and
// in one CUDA thread alike; the fused attention's formulas are here too.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace attnkern {
namespace criss_cross {

// Row of the column position i (0 ≤ i < H − 1) in pixel row h's list: the rows other than h.
ATTNKERN_HD inline int64_t column_row(int64_t i, int64_t h) { return i < h ? i : i + 1; }

// Inverse: the list index i of source row y (y ≠ h) for a pixel in row h.
ATTNKERN_HD inline int64_t column_index(int64_t y, int64_t h) { return y < h ? y : y - 1; }

// Flat offset (within one [H, W] plane) of position p of pixel (h, w).
ATTNKERN_HD inline int64_t position_offset(int64_t p, int64_t h, int64_t w, int64_t H, int64_t W) {
  return p < W ? h * W + p : column_row(p - W, h) * W + w;
}

// Σ_c a[c, a_pixel]·b[c, b_pixel] for [C, HW] planes of one sample.
template <typename acc_t, typename scalar_t>
ATTNKERN_HD inline acc_t channel_dot(const scalar_t* a, int64_t a_pixel, const scalar_t* b, int64_t b_pixel, int64_t C,
                                     int64_t HW) {
  acc_t sum = 0;
  for (int64_t c = 0; c < C; ++c) sum += static_cast<acc_t>(a[c * HW + a_pixel]) * static_cast<acc_t>(b[c * HW + b_pixel]);
  return sum;
}

// e[p, h, w] for one sample: q, k point at channel 0 of [C, H, W] planes.
template <typename acc_t, typename scalar_t>
ATTNKERN_HD inline acc_t affinity_entry(const scalar_t* q, const scalar_t* k, int64_t C, int64_t H, int64_t W,
                                        int64_t p, int64_t h, int64_t w) {
  return channel_dot<acc_t>(q, h * W + w, k, position_offset(p, h, w, H, W), C, H * W);
}

// out[c, h, w] for one sample and channel: a points at the [P, H, W] maps, v at channel c's [H, W] plane.
template <typename acc_t, typename scalar_t>
ATTNKERN_HD inline acc_t aggregate_entry(const scalar_t* a, const scalar_t* v_plane, int64_t H, int64_t W,
                                         int64_t h, int64_t w) {
  const int64_t HW = H * W, P = H + W - 1, pixel = h * W + w;
  acc_t sum = 0;
  for (int64_t p = 0; p < P; ++p) {
    sum += static_cast<acc_t>(a[p * HW + pixel]) * static_cast<acc_t>(v_plane[position_offset(p, h, w, H, W)]);
  }
  return sum;
}

// y[c, y, x] for one sample and channel: Σ over the pixels whose list holds (y, x) — the pixels of
// row y (at list index x) and the other pixels of column x (at index W + column_index(y, h)).
template <typename acc_t, typename scalar_t>
ATTNKERN_HD inline acc_t aggregate_transposed_entry(const scalar_t* a, const scalar_t* g_plane, int64_t H,
                                                    int64_t W, int64_t y, int64_t x) {
  const int64_t HW = H * W;
  acc_t sum = 0;
  for (int64_t w = 0; w < W; ++w) {
    sum += static_cast<acc_t>(a[x * HW + y * W + w]) * static_cast<acc_t>(g_plane[y * W + w]);
  }
  for (int64_t h = 0; h < H; ++h) {
    if (h == y) continue;
    const int64_t p = W + column_index(y, h);
    sum += static_cast<acc_t>(a[p * HW + h * W + x]) * static_cast<acc_t>(g_plane[h * W + x]);
  }
  return sum;
}

// ---- fused attention: softmax over the P positions, from a per-pixel log-sum-exp ------------------
//   out = Σ_p s_p·v_p with s_p = exp(e_p − lse);  backward, with D = Σ_p s_p·(g·v_p) (= Σ_c g·out) at the pixel:
//   dS_p = s_p·(g·v_p − D);  ∂q = Σ_p dS_p·k_p;  ∂k_p += dS_p·q;  ∂v_p += s_p·g.

template <typename acc_t>
ATTNKERN_HD inline acc_t energy_grad(acc_t weight, acc_t grad_weight, acc_t d) { return weight * (grad_weight - d); }

}  // namespace criss_cross
}  // namespace attnkern
