// Gating family: the poolings and gates of squeeze-excite / CBAM-style attention on [B, C, H, W]
// maps (HW = H·W positions per channel plane).
//
//   channel_pool:  mean[b, c] = Σ_p x[b, c, p] / HW,   max[b, c] = max_p x[b, c, p]
//   spatial_pool:  y = x·g[b, c] (g = 1 without a gate);
//                  pooled[b, 0, p] = Σ_c y / C,         pooled[b, 1, p] = max_c y
//   apply_gates:   out[b, c, p] = x[b, c, p]·cg[b, c]·pg[b, p] (an absent gate is 1)
//
// Maxima follow torch.amax: a NaN wins, and the gradient of a maximum is split evenly between the
// elements equal to it. The gated value y is rounded to the storage type before it is compared, in
// the forward and in the backward alike, so ties are found exactly (as on the rounded x·g tensor).
// Accumulation is in at::opmath_type (float32 for half types); reductions run in a fixed order.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace attnkern {
namespace gating {

// The larger of a and b, NaN winning (torch.amax).
template <typename acc_t>
ATTNKERN_HD inline acc_t nan_max(acc_t a, acc_t b) {
  return (a > b || a != a) ? a : b;
}

// y = x·g as the storage type holds it, in the accumulation type.
template <typename acc_t, typename scalar_t>
ATTNKERN_HD inline acc_t gated(scalar_t x, acc_t g) {
  return static_cast<acc_t>(static_cast<scalar_t>(static_cast<acc_t>(x) * g));
}

// The share of a maximum's gradient each of its `ties` equal elements receives: grad_max / ties, as in
// torch.amax's backward. No element equals a NaN maximum (ties = 0): a nonzero gradient then becomes ±inf,
// which pool_gradient turns into NaN for every element, as torch.amax does; a zero gradient stays 0.
template <typename acc_t>
ATTNKERN_HD inline acc_t max_share(acc_t grad_max, int64_t ties) {
  return ties > 0 || grad_max != acc_t(0) ? grad_max / static_cast<acc_t>(ties) : acc_t(0);
}

// Gradient reaching one pooled element: the mean's share plus, at a maximum, the max's share — as
// torch's mean_share + share·[is_max], so that an infinite or NaN share makes every element NaN.
template <typename acc_t>
ATTNKERN_HD inline acc_t pool_gradient(acc_t mean_share, acc_t max_share_, bool is_max) {
  return mean_share + max_share_ * static_cast<acc_t>(is_max);
}

}  // namespace gating
}  // namespace attnkern
