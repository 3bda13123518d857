// Covariance pooling, Newton–Schulz matrix square root and triuvec (SAN's SOCA, iSQRT-COV).
//
// Math shared by the CPU and CUDA kernels (no ATen: covpool_checks.h holds the host-side pieces).
//
//   covpool:  Σ = (1/M)·Xc·Xcᵀ,  Xc = X − μ·1ᵀ              ∂L/∂X = (G + Gᵀ)·Xc / M
//   sqrtm:    t = tr(X), A = X/t, Y₀ = A, Z₀ = I,
//             Tₖ = ½(3I − Zₖ·Yₖ), Yₖ₊₁ = Yₖ·Tₖ, Zₖ₊₁ = Tₖ·Zₖ        (k < iters − 1)
//             P = ½·Y_f·(3I − Z_f·Y_f),  out = P·√t                 (f = iters − 1)
//   sqrtm backward (G = ∂L/∂out, Gp = G·√t): gY_f = 1.5·Gp − ½(Gp·(Z_f·Y_f)ᵀ + (Z_f·Y_f)ᵀ·Gp),
//             gZ_f = −½·Y_fᵀ·Gp·Y_fᵀ; then each step reversed, k = f − 1 … 0:
//             gT = Yₖᵀ·gYₖ₊₁ + gZₖ₊₁·Zₖᵀ,  gYₖ = gYₖ₊₁·Tₖᵀ − ½·Zₖᵀ·gT,  gZₖ = Tₖᵀ·gZₖ₊₁ − ½·gT·Yₖᵀ;
//             gY₀ = ∂L/∂A, and trace_grad_coefficient (below) gives ∂L/∂X.
//   Both implementations compose these steps from matrix products: sqrtm_batched_* (covpool_host.cpp,
//   at::bmm/baddbmm: the CPU, and CUDA matrices too large for shared memory) and the one-block CUDA
//   kernels (block_product/product_entry), with the coefficients below.
//   triuvec:  the entries a[i, j] with j ≤ i, row by row (SAN's Triuvec order).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace attnkern {
namespace covpool {

// Newton–Schulz coefficients: T = kThreeHalves·I − kHalf·Z·Y and P = kThreeHalves·Y − kHalf·Y·Z·Y.
constexpr double kThreeHalves = 1.5;
constexpr double kHalf = 0.5;

// Position of a[i, j] (j ≤ i) in the triuvec output.
ATTNKERN_HD inline int64_t triu_index(int64_t i, int64_t j) { return i * (i + 1) / 2 + j; }

// Inverse of triu_index: the row i with i(i+1)/2 ≤ k < (i+1)(i+2)/2, and j = k − i(i+1)/2.
ATTNKERN_HD inline void triu_row_col(int64_t k, int64_t& i, int64_t& j) {
  int64_t r = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(k) + 1.0) - 1.0) * 0.5);
  while (r * (r + 1) / 2 > k) --r;  // correct the floating-point estimate
  while ((r + 1) * (r + 2) / 2 <= k) ++r;
  i = r;
  j = k - r * (r + 1) / 2;
}

// The coefficient of I in ∂L/∂X of out = P(X/t)·√t, given gA = ∂L/∂A:
//   ∂L/∂X = gA/t + (−⟨gA, A⟩/t + ⟨G, P⟩/(2√t))·I,
// from ∂A/∂X = (dX − A·tr(dX))/t and ∂√t/∂X = I/(2√t). T is a scalar, or an at::Tensor of
// per-matrix values (sqrt is then at::sqrt, found by argument-dependent lookup).
template <typename T>
ATTNKERN_HD inline T trace_grad_coefficient(const T& gA_dot_A, const T& G_dot_P, const T& t) {
  return -gA_dot_A / t + G_dot_P / (sqrt(t) * 2);
}

}  // namespace covpool
}  // namespace attnkern
