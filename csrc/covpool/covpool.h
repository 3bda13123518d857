// Covariance pooling, Newton–Schulz matrix square root and triuvec (SAN's SOCA, iSQRT-COV).
//
// Math shared by the CPU and CUDA kernels, and the host-side pieces both use.
//
//   covpool:  Σ = (1/M)·Xc·Xcᵀ,  Xc = X − μ·1ᵀ              ∂L/∂X = (G + Gᵀ)·Xc / M
//   sqrtm:    t = tr(X), A = X/t, Y₀ = A, Z₀ = I,
//             Tₖ = ½(3I − Zₖ·Yₖ), Yₖ₊₁ = Yₖ·Tₖ, Zₖ₊₁ = Tₖ·Zₖ        (k < iters − 1)
//             P = ½·Y_f·(3I − Z_f·Y_f),  out = P·√t                 (f = iters − 1)
//   triuvec:  the entries a[i, j] with j ≤ i, row by row (SAN's Triuvec order).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "common/dtype.h"
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

// ---- host side ------------------------------------------------------------------------------

// The largest iteration count sqrtm_newton_schulz accepts. Until it converges quadratically, a step
// multiplies the smallest eigenvalue of A = a/tr(a) by about 2.25, so 1000 steps bring any eigenvalue
// a float64 can hold (≥ 1e-308) to convergence; more only costs time (and 3·iters − 1 saved matrices).
constexpr int64_t kMaxIters = 1000;

// n(n+1)/2, the length of triuvec's output for n×n matrices; a ValueError naming `name` on overflow.
int64_t triuvec_length(int64_t n, const char* name);

// Argument checks: the kernels and the check ops (what attnkern.ops runs before a reference) call them.
void check_covpool_input(const at::Tensor& x);
void check_sqrtm_input(const at::Tensor& a, int64_t iters);
void check_triuvec_input(const at::Tensor& a);
void check_triuvec_grad(const at::Tensor& grad, int64_t n);
void check_grad(const at::Tensor& grad, const char* grad_name, at::IntArrayRef expected,
                const at::Tensor& input, const char* input_name);

// The iterates a training forward saves for the backward: [3·iters − 1, B, C, C] in the accumulation
// type; slot 3k holds Yₖ, 3k+1 Zₖ, 3k+2 Tₖ (k < f), slots 3f and 3f+1 hold Y_f and Z_f. An empty
// tensor stands for "not saved": the backward then recomputes them.
at::Tensor iterates_alloc(const at::Tensor& a, int64_t iters);
at::Tensor iterates_empty(const at::Tensor& a);
// Checks a saved iterates tensor against a [B, C, C] and iters.
void check_saved_iterates(const at::Tensor& saved, const at::Tensor& a, int64_t iters);

// Newton–Schulz forward and backward over batched GEMMs (at::bmm): device-agnostic, used by the
// CPU kernels and by the CUDA kernels for matrices too large for one block's shared memory.
std::tuple<at::Tensor, at::Tensor> sqrtm_batched_forward(const at::Tensor& a, int64_t iters, bool save_iterates);
at::Tensor sqrtm_batched_backward(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& iterates,
                                  int64_t iters);

}  // namespace covpool
}  // namespace attnkern
