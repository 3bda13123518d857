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
//   The steps, forward and reversed, are the function templates below, written once over a policy
//   that multiplies matrices: at::bmm/baddbmm on batches (covpool_host.cpp's sqrtm_batched_*: the CPU,
//   and CUDA matrices too large for shared memory) and one CUDA block on one matrix in shared memory
//   (covpool_cuda.cu, SquareProducts below), or plain loops (the tests).
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


// ---- Newton–Schulz steps over a matrix-product policy -------------------------------------------
//
// A policy M multiplies matrices of one shape (n×n, or batches of them). It provides
//   M::Scalar                     the type of the coefficients α and β
//   M::Matrix                     a matrix a step writes (and may read afterwards)
//   M::Operand                    a matrix a step reads; a Matrix converts to it
//   m.transposed(x)               the Operand xᵀ (a view: nothing is copied)
//   m.identity()                  the Operand I
//   m.product(out, a, b, α)       out = α·a·b
//   m.product(out, a, b, α, c, β) out = α·a·b + β·c, where c may be out itself (out += α·a·b for β = 1)
// out never aliases a or b, and a product is complete (for every thread that takes part) when it returns.
// Its functions may be host-only or device-only: ATTNKERN_HD_TEMPLATE (common/macros.h).

// One step: T = 1.5·I − ½·Z·Y, Y' = Y·T, Z' = T·Z. z_next may be y's matrix (y is read no more once
// y_next is written); nothing else may alias.
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_step(const M& m, typename M::Operand y, typename M::Operand z,
                                           typename M::Matrix t, typename M::Matrix y_next,
                                           typename M::Matrix z_next) {
  using S = typename M::Scalar;
  m.product(t, z, y, S(-kHalf), m.identity(), S(kThreeHalves));
  m.product(y_next, y, t, S(1));
  m.product(z_next, t, z, S(1));
}

// The three matrices that take turns in newton_schulz_step_in_place (and the backward's): y ← w,
// z ← y, w ← z.
template <typename X>
ATTNKERN_HD inline void rotate_matrices(X& y, X& z, X& w) {
  X next_y = w;
  w = z;
  z = y;
  y = next_y;
}

// One step in four matrices: Y and Z advance (Y' into w, Z' over the old Y, the old Z becomes the
// spare w); t holds T afterwards.
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_step_in_place(const M& m, typename M::Matrix& y, typename M::Matrix& z,
                                                    typename M::Matrix t, typename M::Matrix& w) {
  newton_schulz_step(m, y, z, t, w, y);
  rotate_matrices(y, z, w);
}

// The final step: zy = Z·Y, P = 1.5·Y − ½·Y·(Z·Y).
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_final(const M& m, typename M::Operand y, typename M::Operand z,
                                            typename M::Matrix zy, typename M::Matrix p) {
  using S = typename M::Scalar;
  m.product(zy, z, y, S(1));
  m.product(p, y, zy, S(-kHalf), y, S(kThreeHalves));
}

// The final step's gradient, from gp = ∂L/∂P and zy = Z·Y (= Y·Z: both are polynomials in A):
//   gY = 1.5·gp − ½·(gp·zyᵀ + zyᵀ·gp),  gZ = −½·Yᵀ·gp·Yᵀ.
// work (Yᵀ·gp) may be zy's matrix (zy is read no more once gy is written).
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_final_backward(const M& m, typename M::Operand gp, typename M::Operand y,
                                                     typename M::Operand zy, typename M::Matrix gy,
                                                     typename M::Matrix gz, typename M::Matrix work) {
  using S = typename M::Scalar;
  m.product(gy, gp, m.transposed(zy), S(-kHalf), gp, S(kThreeHalves));
  m.product(gy, m.transposed(zy), gp, S(-kHalf), gy, S(1));
  m.product(work, m.transposed(y), gp, S(1));
  m.product(gz, work, m.transposed(y), S(-kHalf));
}

// One step reversed, from the step's Y, Z, T and gy_next = ∂L/∂Y', gz_next = ∂L/∂Z':
//   gT = Yᵀ·gY' + gZ'·Zᵀ,  gY = gY'·Tᵀ − ½·Zᵀ·gT,  gZ = Tᵀ·gZ' − ½·gT·Yᵀ
// into gt, gy and (when z_grad: Z₀ = I needs none) gz. gz may be gy_next's matrix (gy_next is read no
// more once gy is written); nothing else may alias.
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_step_backward(const M& m, typename M::Operand y, typename M::Operand z,
                                                    typename M::Operand t, typename M::Operand gy_next,
                                                    typename M::Operand gz_next, typename M::Matrix gt,
                                                    typename M::Matrix gy, typename M::Matrix gz, bool z_grad) {
  using S = typename M::Scalar;
  m.product(gt, m.transposed(y), gy_next, S(1));
  m.product(gt, gz_next, m.transposed(z), S(1), gt, S(1));
  m.product(gy, gy_next, m.transposed(t), S(1));
  m.product(gy, m.transposed(z), gt, S(-kHalf), gy, S(1));
  if (!z_grad) return;
  m.product(gz, m.transposed(t), gz_next, S(1));
  m.product(gz, gt, m.transposed(y), S(-kHalf), gz, S(1));
}

// One step reversed in four matrices: gy and gz go back one step (gY into spare, gZ over the old gY,
// the old gZ becomes the spare); gt is work space.
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_step_backward_in_place(const M& m, typename M::Operand y, typename M::Operand z,
                                                             typename M::Operand t, typename M::Matrix& gy,
                                                             typename M::Matrix& gz, typename M::Matrix gt,
                                                             typename M::Matrix& spare, bool z_grad) {
  newton_schulz_step_backward(m, y, z, t, gy, gz, gt, spare, gy, z_grad);
  rotate_matrices(gy, gz, spare);
}

// ---- the pointer policy: n×n row-major matrices of T -------------------------------------------

// An n×n row-major matrix read as it is or transposed, or the identity; default-constructed, none.
template <typename T>
struct SquareOperand {
  const T* data = nullptr;
  bool transposed = false;
  bool identity = false;

  SquareOperand() = default;
  ATTNKERN_HD SquareOperand(const T* matrix) : data(matrix) {}  // NOLINT: a matrix converts implicitly

  ATTNKERN_HD T at(int n, int i, int j) const {
    return identity ? T(i == j ? 1 : 0) : transposed ? data[j * n + i] : data[i * n + j];
  }
};

// One thread computes every entry of a product (the tests' plain loops).
struct SerialLanes {
  ATTNKERN_HD static int first() { return 0; }
  ATTNKERN_HD static int stride() { return 1; }
  ATTNKERN_HD static void sync() {}
};

// The policy over n×n row-major matrices of T. Lanes says which entries of each product the caller
// computes (Lanes::first(), first() + stride(), … below n²) and waits for the others' (Lanes::sync()):
// SerialLanes, or a CUDA block's threads (covpool_cuda.cu).
template <typename T, typename Lanes>
struct SquareProducts {
  using Scalar = T;
  using Matrix = T*;
  using Operand = SquareOperand<T>;

  int n;

  ATTNKERN_HD Operand transposed(Operand x) const {
    x.transposed = !x.transposed;
    return x;
  }
  ATTNKERN_HD Operand identity() const {
    Operand x;
    x.identity = true;
    return x;
  }

  // Σ_k a[i, k]·b[k, j] (a and b matrices, not the identity).
  ATTNKERN_HD T product_entry(const Operand& a, const Operand& b, int i, int j) const {
    T sum = 0;
    for (int k = 0; k < n; ++k) {
      const T a_ik = a.transposed ? a.data[k * n + i] : a.data[i * n + k];
      const T b_kj = b.transposed ? b.data[j * n + k] : b.data[k * n + j];
      sum += a_ik * b_kj;
    }
    return sum;
  }

  ATTNKERN_HD_TEMPLATE
  ATTNKERN_HD void product(T* out, const Operand& a, const Operand& b, T alpha, const Operand& c = Operand(),
                           T beta = T(0)) const {
    const bool add = c.identity || c.data != nullptr;
    for (int e = Lanes::first(); e < n * n; e += Lanes::stride()) {
      const int i = e / n, j = e % n;
      T value = alpha * product_entry(a, b, i, j);
      if (add) value += beta * c.at(n, i, j);
      out[e] = value;
    }
    Lanes::sync();
  }
};

}  // namespace covpool
}  // namespace attnkern
