// Gating family: the poolings and gates of squeeze-excite / CBAM-style attention on [B, C, H, W]
// maps (HW = H·W positions per channel plane).
//
//   channel_pool:  mean[b, c] = Σ_p x[b, c, p] / HW,   max[b, c] = max_p x[b, c, p]
//   spatial_pool:  y = x·g[b, c] (g = 1 without a gate);
//                  pooled[b, 0, p] = Σ_c y / C,         pooled[b, 1, p] = max_c y
//   apply_gates:   out[b, c, p] = x[b, c, p]·cg[b, c]·pg[b, p] (an absent gate is 1)
//   group_enhance: SGE's gate of each group of C/G channels (below)
//
// Maxima follow torch.amax: a NaN wins, and the gradient of a maximum is split evenly between the
// elements equal to it. The gated value y is rounded to the storage type before it is compared, in
// the forward and in the backward alike, so ties are found exactly (as on the rounded x·g tensor).
// Accumulation is in at::opmath_type (float32 for half types); reductions run in a fixed order.
#pragma once

#include <cmath>
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

// ---- group_enhance (SGE, spatial group-wise enhance) ----------------------------------------------
//
// Per sample b and group g, over the group's m = C/G channels c and its n = H·W positions p:
//   mean_c = Σ_p x_cp / n,   s_p = Σ_c x_cp·mean_c               (similarity to the group's mean)
//   μ = Σ_p s_p / n,   σ = sqrt(Σ_p (s_p − μ)² / (n − 1)),   ĉ_p = (s_p − μ) / (σ + ε)   (ĉ = 0 if n = 1)
//   gate_p = sigmoid(w_g·ĉ_p + b_g),   out_cp = x_cp·gate_p
// (the authors' unbiased σ with ε added to it). Backward, for the output gradient y_cp:
//   t_p = Σ_c y_cp·x_cp · gate_p·(1 − gate_p),   ∂w_g = Σ_b Σ_p t_p·ĉ_p,   ∂b_g = Σ_b Σ_p t_p
//   ∂s_p = w_g/(σ + ε) · (t_p − Σ_q t_q / n − ĉ_p · (σ + ε)/((n − 1)·σ) · Σ_q t_q·ĉ_q)
//   ∂x_cp = y_cp·gate_p + ∂s_p·mean_c + Σ_q ∂s_q·x_cq / n
// The last term of ∂s_p is ∂σ's share, d_p·∂σ/((n − 1)σ) with d_p = s_p − μ: where σ = 0 every d_p is 0,
// and the term is taken as 0, as autograd's std backward does (a group of all-zero channels).

constexpr double kGroupEnhanceEps = 1e-5;

// The normalisation of one group's similarities from Σ_p s_p and Σ_p (s_p − μ)².
template <typename acc_t>
struct GroupNorm {
  acc_t mean;    // μ
  acc_t scale;   // 1 / (σ + ε); 0 when n = 1 (ĉ = 0)
  acc_t spread;  // (σ + ε) / ((n − 1)·σ): ∂σ's factor in ∂s; 0 when σ = 0 or n = 1

  ATTNKERN_HD static GroupNorm of(acc_t sum, acc_t squared_deviations, int64_t n) {
    const acc_t mean = sum / static_cast<acc_t>(n);
    if (n < 2) return {mean, acc_t(0), acc_t(0)};
    const acc_t sigma = std::sqrt(squared_deviations / static_cast<acc_t>(n - 1));
    const acc_t shifted = sigma + static_cast<acc_t>(kGroupEnhanceEps);
    return {mean, acc_t(1) / shifted, sigma > acc_t(0) ? shifted / (static_cast<acc_t>(n - 1) * sigma) : acc_t(0)};
  }
  ATTNKERN_HD acc_t normalised(acc_t s) const { return (s - mean) * scale; }
};

template <typename acc_t>
ATTNKERN_HD inline acc_t sigmoid(acc_t t) {
  return acc_t(1) / (acc_t(1) + std::exp(-t));
}

// ∂s_p from t_p and ĉ_p, given the group's Σ t / n and Σ t·ĉ (formula above).
template <typename acc_t>
struct SimilarityGrad {
  acc_t factor;     // w / (σ + ε)
  acc_t mean_t;     // Σ_q t_q / n
  acc_t spread_tc;  // (σ + ε)/((n − 1)σ) · Σ_q t_q·ĉ_q

  ATTNKERN_HD static SimilarityGrad of(const GroupNorm<acc_t>& norm, acc_t weight, acc_t sum_t, acc_t sum_tc,
                                       int64_t n) {
    return {weight * norm.scale, sum_t / static_cast<acc_t>(n), norm.spread * sum_tc};
  }
  ATTNKERN_HD acc_t operator()(acc_t t, acc_t c_hat) const { return factor * (t - mean_t - c_hat * spread_tc); }
};

}  // namespace gating
}  // namespace attnkern
