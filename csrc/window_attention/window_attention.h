// Shifted-window multi-head attention with relative position bias (Swin, SwinIR), in image layout.
//
//   qkv  [B, H, W, 3, heads, d]   the qkv Linear's output viewed as an image (q, k, v of every pixel)
//   out  [B, H, W, heads, d]      what the output projection reads
//   lse  [B, H, W, heads]         per query token, log Σ_j exp(s_ij): the backward recomputes P from it
//
// The image is cut, after a cyclic shift by −shift along both axes, into nW = (H/ws)·(W/ws) windows of
// N = ws² tokens, both numbered row-major. Within a window, for one head (Swin, eq. 4):
//   s_ij = scale·q_i·k_j + bias[i, j] + region_ij + mask[w, i, j],   P = softmax_j(s),   o_i = Σ_j P_ij·v_j
// where region_ij = −100 between tokens of different regions of a shifted window (SwinIR's
// calculate_mask), 0 otherwise. Gradients (D_i = Σ_c dO_ic·o_ic, dS_ij = P_ij·(dO_i·v_j − D_i)):
//   dq_i = scale·Σ_j dS_ij·k_j,   dk_j = scale·Σ_i dS_ij·q_i,   dv_j = Σ_i P_ij·dO_i,   dbias = Σ_windows dS.
//
// The index maps below place every token without partition or roll copies; the CPU and CUDA kernels
// both use them.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace attnkern {
namespace window_attention {

// SwinIR's additive mask between tokens of different regions (not −inf: a row is never empty).
constexpr float kRegionMaskValue = -100.0f;

// Where the windows lie: an H×W image, square windows of `window` pixels, cyclic shift `shift`.
struct WindowGrid {
  int64_t H, W, window, shift;

  ATTNKERN_HD int64_t tokens() const { return window * window; }
  ATTNKERN_HD int64_t windows() const { return (H / window) * (W / window); }

  // Coordinates in the shifted image of token t of window w.
  ATTNKERN_HD int64_t shifted_row(int64_t w, int64_t t) const { return (w / (W / window)) * window + t / window; }
  ATTNKERN_HD int64_t shifted_col(int64_t w, int64_t t) const { return (w % (W / window)) * window + t % window; }

  // Pixel (y·W + x) of the image at shifted coordinates (sy, sx): image ((sy + shift) mod H,
  // (sx + shift) mod W).
  ATTNKERN_HD int64_t pixel_at(int64_t sy, int64_t sx) const {
    const int64_t y = sy + shift, x = sx + shift;
    return (y < H ? y : y - H) * W + (x < W ? x : x - W);
  }

  // SwinIR's region of shifted coordinates (sy, sx) (shift > 0): each axis of the shifted image splits
  // at length − window and length − shift into regions 0, 1, 2; tokens of different regions mask each other.
  ATTNKERN_HD int region_at(int64_t sy, int64_t sx) const {
    const int ry = (sy >= H - window) + (sy >= H - shift), rx = (sx >= W - window) + (sx >= W - shift);
    return ry * 3 + rx;
  }

  // The pixel and region of token t of window w.
  ATTNKERN_HD int64_t pixel(int64_t w, int64_t t) const { return pixel_at(shifted_row(w, t), shifted_col(w, t)); }
  ATTNKERN_HD int region(int64_t w, int64_t t) const { return region_at(shifted_row(w, t), shifted_col(w, t)); }
};

// Offsets into qkv [B, H, W, 3, heads, d] and into out/grad [B, H, W, heads, d] of head h of a pixel.
ATTNKERN_HD inline int64_t qkv_offset(int64_t pixel, int which, int64_t h, int64_t heads, int64_t d) {
  return ((pixel * 3 + which) * heads + h) * d;
}
ATTNKERN_HD inline int64_t out_offset(int64_t pixel, int64_t h, int64_t heads, int64_t d) {
  return (pixel * heads + h) * d;
}

// The region mask between two tokens of a shifted window.
template <typename acc_t>
ATTNKERN_HD inline acc_t region_penalty(int region_i, int region_j) {
  return region_i != region_j ? static_cast<acc_t>(kRegionMaskValue) : acc_t(0);
}

// The additive part of s_ij: bias (of this head, [N, N]), the explicit mask (of this window, [N, N]) and,
// in a shifted window, the region mask of i's and j's region ids (read by the caller: once a row and a key
// tile in the tensor-core kernels). bias and mask may be null.
template <typename acc_t, typename bias_t, typename mask_t>
ATTNKERN_HD inline acc_t logit_offset(const bias_t* bias, const mask_t* mask, bool shifted, int region_i,
                                      int region_j, int64_t i, int64_t j, int64_t N) {
  acc_t offset = 0;
  if (bias != nullptr) offset += static_cast<acc_t>(bias[i * N + j]);
  if (mask != nullptr) offset += static_cast<acc_t>(mask[i * N + j]);
  if (shifted) offset += region_penalty<acc_t>(region_i, region_j);
  return offset;
}

// The same with the window's region ids ([N]; null when the window is not shifted).
template <typename acc_t, typename bias_t, typename mask_t>
ATTNKERN_HD inline acc_t logit_offset(const bias_t* bias, const mask_t* mask, const int* region, int64_t i, int64_t j,
                                      int64_t N) {
  const bool shifted = region != nullptr;
  return logit_offset<acc_t>(bias, mask, shifted, shifted ? region[i] : 0, shifted ? region[j] : 0, i, j, N);
}

// dS_ij = P_ij·(dP_ij − D_i): the softmax backward of one logit, into ds. T is acc_t, or a vector type
// of common/cpu_vec.h (the CPU kernels: logits of one row, a lane each). Vectors pass by reference: this
// header is compiled for the baseline instruction set, and a function of it that took or returned an
// AVX vector by value would have another ABI than its AVX callers (GCC's -Wpsabi); always inlined, it
// is the caller's instructions either way.
template <typename T>
ATTNKERN_HD inline void logit_grad(T& ds, const T& p, const T& dp, const T& d_i) {
  ds = p * (dp - d_i);
}

template <typename acc_t>
ATTNKERN_HD inline acc_t logit_grad(acc_t p, acc_t dp, acc_t d_i) {
  acc_t ds;
  logit_grad(ds, p, dp, d_i);
  return ds;
}

// How many window groups the backward splits the B·nW windows into: one block/task per (group, head)
// accumulates its own partial bias gradient, and the partials are summed in a fixed order afterwards.
inline int64_t backward_groups(int64_t total_windows) { return total_windows < 64 ? total_windows : 64; }

}  // namespace window_attention
}  // namespace attnkern
