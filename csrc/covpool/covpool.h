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
//             gY₀ = ∂L/∂A, and trace_grad_coefficient (below) gives ∂L/∂X. Step 0, where Z₀ = I, needs one
//             product forward and two reversed (newton_schulz_first_step*), not three and four.
//   The steps, forward and reversed, are the function templates below, written once over a policy
//   that multiplies matrices: at::bmm/baddbmm on batches (covpool_host.cpp's sqrtm_batched_*: the CPU,
//   and CUDA matrices larger than 64×64) and one CUDA block on one matrix in shared memory
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

// The iterates a training forward saves for the backward, in the accumulation type: step k (k < iters − 1)
// saves Tₖ and the Yₖ₊₁, Zₖ₊₁ it makes. Z₁ = T₀·I is T₀, so step 0 saves T₀ (slot 0, also Z₁'s) and Y₁
// (slot 1), and step k ≥ 1 its three in slots 3k − 1 + kSavedT, kSavedY, kSavedZ: 3·iters − 4 in all. The
// step-0 inputs Y₀ = A = a/t and Z₀ = I are not saved: the backward forms them again from a.
enum SavedIterate { kSavedT = 0, kSavedY = 1, kSavedZ = 2 };
ATTNKERN_HD inline int64_t saved_iterate_count(int64_t iters) { return iters > 1 ? 3 * iters - 4 : 0; }
ATTNKERN_HD inline int64_t saved_slot(int64_t step, SavedIterate which) {
  return step == 0 ? (which == kSavedZ ? int64_t(kSavedT) : int64_t(which)) : 3 * step - 1 + which;
}

// Position of a[i, j] (j ≤ i) in the triuvec output.
ATTNKERN_HD inline int64_t triu_index(int64_t i, int64_t j) { return i * (i + 1) / 2 + j; }

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
//   m.identity_plus(out, a, α, β) out = α·a + β·I (the first step's T₀)
//   m.accumulate(out, a, α)       out += α·a
// and is complete (for every thread that takes part) when each returns.
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

// Step 0, where Z₀ = I: T₀ = 1.5·I − ½·A and Y₁ = A·T₀ — one product where newton_schulz_step takes
// three (Z₀·Y₀ = A, T₀·Z₀ = T₀). Z₁ is T₀: t's matrix serves as both. Nothing may alias.
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_first_step(const M& m, typename M::Operand a, typename M::Matrix t,
                                                 typename M::Matrix y_next) {
  using S = typename M::Scalar;
  m.identity_plus(t, a, S(-kHalf), S(kThreeHalves));
  m.product(y_next, a, t, S(1));
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

// Step 0 in four matrices: y holds A, z and t nothing yet; afterwards y holds Y₁ and z Z₁ = T₀, while t
// and w are spare (w A's matrix).
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_first_step_in_place(const M& m, typename M::Matrix& y, typename M::Matrix& z,
                                                          typename M::Matrix& t, typename M::Matrix& w) {
  newton_schulz_first_step(m, y, t, w);
  typename M::Matrix a = y, spare = z;
  y = w;
  z = t;
  t = spare;
  w = a;
}

// The final step: zy = Z·Y (newton_schulz_final_zy), P = 1.5·Y − ½·Y·(Z·Y).
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_final_zy(const M& m, typename M::Operand y, typename M::Operand z,
                                               typename M::Matrix zy) {
  using S = typename M::Scalar;
  m.product(zy, z, y, S(1));
}

ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_final(const M& m, typename M::Operand y, typename M::Operand z,
                                            typename M::Matrix zy, typename M::Matrix p) {
  using S = typename M::Scalar;
  newton_schulz_final_zy(m, y, z, zy);
  m.product(p, y, zy, S(-kHalf), y, S(kThreeHalves));
}

// The final step's gradient, from gp = ∂L/∂P and zy = Z·Y (= Y·Z: both are polynomials in A):
//   gY = 1.5·gp − ½·(gp·zyᵀ + zyᵀ·gp),  gZ = −½·Yᵀ·gp·Yᵀ,
// in two parts. The first, gy = 1.5·gp − ½·gp·zyᵀ, has ⟨gy, Y⟩ = ⟨gp, P⟩ (⟨gp·zyᵀ, Y⟩ = tr(zy·gpᵀ·Y) =
// ⟨gp, Y·zy⟩), so the backward needs no P. In the rest, work (Yᵀ·gp) may be zy's matrix (zy is read no
// more once gy is written).
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_final_backward_first(const M& m, typename M::Operand gp,
                                                           typename M::Operand zy, typename M::Matrix gy) {
  using S = typename M::Scalar;
  m.product(gy, gp, m.transposed(zy), S(-kHalf), gp, S(kThreeHalves));
}

ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_final_backward_rest(const M& m, typename M::Operand gp, typename M::Operand y,
                                                          typename M::Operand zy, typename M::Matrix gy,
                                                          typename M::Matrix gz, typename M::Matrix work) {
  using S = typename M::Scalar;
  m.product(gy, m.transposed(zy), gp, S(-kHalf), gy, S(1));
  m.product(work, m.transposed(y), gp, S(1));
  m.product(gz, work, m.transposed(y), S(-kHalf));
}

// One step reversed (k ≥ 1; step 0 is newton_schulz_first_step_backward_in_place), from the step's Y, Z, T
// and gy_next = ∂L/∂Y', gz_next = ∂L/∂Z':
//   gT = Yᵀ·gY' + gZ'·Zᵀ,  gY = gY'·Tᵀ − ½·Zᵀ·gT,  gZ = Tᵀ·gZ' − ½·gT·Yᵀ
// into gt, gy and gz. gz may be gy_next's matrix (gy_next is read no more once gy is written); nothing else
// may alias.
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_step_backward(const M& m, typename M::Operand y, typename M::Operand z,
                                                    typename M::Operand t, typename M::Operand gy_next,
                                                    typename M::Operand gz_next, typename M::Matrix gt,
                                                    typename M::Matrix gy, typename M::Matrix gz) {
  using S = typename M::Scalar;
  m.product(gt, m.transposed(y), gy_next, S(1));
  m.product(gt, gz_next, m.transposed(z), S(1), gt, S(1));
  m.product(gy, gy_next, m.transposed(t), S(1));
  m.product(gy, m.transposed(z), gt, S(-kHalf), gy, S(1));
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
                                                             typename M::Matrix& spare) {
  newton_schulz_step_backward(m, y, z, t, gy, gz, gt, spare, gy);
  rotate_matrices(gy, gz, spare);
}

// Step 0 reversed (Z₀ = I: gT = Aᵀ·gY₁ + gZ₁, ∂L/∂A = gY₁·T₀ᵀ − ½·gT), two products where
// newton_schulz_step_backward takes four. In four matrices as newton_schulz_step_backward_in_place: gy holds
// ∂L/∂A afterwards; gt is work space.
ATTNKERN_HD_TEMPLATE
template <typename M>
ATTNKERN_HD inline void newton_schulz_first_step_backward_in_place(const M& m, typename M::Operand a,
                                                                   typename M::Operand t, typename M::Matrix& gy,
                                                                   typename M::Matrix& gz, typename M::Matrix gt,
                                                                   typename M::Matrix& spare) {
  using S = typename M::Scalar;
  m.product(gt, m.transposed(a), gy, S(1), gz, S(1));
  m.product(spare, gy, m.transposed(t), S(1));
  m.accumulate(spare, gt, S(-kHalf));
  rotate_matrices(gy, gz, spare);
}

// ---- the pointer policy: n×n matrices of T stored by rows ld ≥ n elements apart ------------------

// An n×n matrix (rows ld elements apart) read as it is or transposed, or the identity; default-constructed,
// none. op(x)[i, k] = data[i·row_step + k·col_step]: the strides of one walk serve both orientations.
template <typename T>
struct SquareOperand {
  const T* data = nullptr;
  bool transposed = false;
  bool identity = false;

  SquareOperand() = default;
  ATTNKERN_HD SquareOperand(const T* matrix) : data(matrix) {}  // NOLINT: a matrix converts implicitly

  ATTNKERN_HD int row_step(int ld) const { return transposed ? 1 : ld; }
  ATTNKERN_HD int col_step(int ld) const { return transposed ? ld : 1; }
  ATTNKERN_HD T at(int ld, int i, int j) const {
    return identity ? T(i == j ? 1 : 0) : data[i * row_step(ld) + j * col_step(ld)];
  }
};

// One thread computes every entry of a product (the tests' plain loops).
struct SerialLanes {
  ATTNKERN_HD static int first() { return 0; }
  ATTNKERN_HD static int stride() { return 1; }
  ATTNKERN_HD static void sync() {}
};

// A product's n×n output in tiles of kProductTile × kProductTile entries, each tile split over
// kProductCells cells of kCellSide × kCellSide entries: cell c of a tile owns rows r0 + kCellRows·u and
// columns c0 + kCellRows·v (u, v < kCellSide) with r0 = c / kCellRows, c0 = c % kCellRows, so that in
// each k-step a cell reads kCellSide entries of a's column and kCellSide of b's row into registers for
// kCellSide² multiply-adds, and consecutive cells read consecutive columns of b (and the same rows of a).
constexpr int kCellSide = 4;
constexpr int kCellRows = 16;                      // cells along a tile's side
constexpr int kProductTile = kCellSide * kCellRows;  // 64
constexpr int kProductCells = kCellRows * kCellRows;  // 256

// The policy over n×n matrices of T, rows ld apart. Lanes says which cells of each product the caller
// computes (Lanes::first(), first() + stride(), … below ⌈n/64⌉²·256) and waits for the others'
// (Lanes::sync()): SerialLanes, or a CUDA block's threads (covpool_cuda.cu: one cell a thread, n ≤ 64).
// In shared memory an odd ld makes every read of a product conflict-free, transposed or not: the
// entries a warp reads in one k-step (2 of op(a)'s column, 16 of op(b)'s row) are consecutive or ld
// apart, distinct banks either way.
template <typename T, typename Lanes>
struct SquareProducts {
  using Scalar = T;
  using Matrix = T*;
  using Operand = SquareOperand<T>;

  int n;
  int ld;

  ATTNKERN_HD explicit SquareProducts(int n_) : n(n_), ld(n_) {}
  ATTNKERN_HD SquareProducts(int n_, int ld_) : n(n_), ld(ld_) {}

  ATTNKERN_HD Operand transposed(Operand x) const {
    x.transposed = !x.transposed;
    return x;
  }
  ATTNKERN_HD Operand identity() const {
    Operand x;
    x.identity = true;
    return x;
  }

  // out = α·op(a)·op(b) (+ β·op(c)) on one cell (a and b matrices, not the identity; c may be out).
  ATTNKERN_HD_TEMPLATE
  ATTNKERN_HD void product_cell(T* out, const Operand& a, const Operand& b, T alpha, const Operand& c, T beta,
                                int cell) const {
    const int tiles = (n + kProductTile - 1) / kProductTile;
    const int tile = cell / kProductCells, in_tile = cell % kProductCells;
    const int r0 = tile / tiles * kProductTile + in_tile / kCellRows;
    const int c0 = tile % tiles * kProductTile + in_tile % kCellRows;
    // Rows and columns past n (a ragged last tile) read row/column n − 1 and store nothing.
    const T* pa[kCellSide];
    const T* pb[kCellSide];
    for (int u = 0; u < kCellSide; ++u) {
      const int i = r0 + kCellRows * u, j = c0 + kCellRows * u;
      pa[u] = a.data + (i < n ? i : n - 1) * a.row_step(ld);
      pb[u] = b.data + (j < n ? j : n - 1) * b.col_step(ld);
    }
    const int a_k = a.col_step(ld), b_k = b.row_step(ld);
    T acc[kCellSide][kCellSide] = {};
#ifdef __CUDA_ARCH__
#pragma unroll 4
#endif
    for (int k = 0; k < n; ++k) {
      T av[kCellSide], bv[kCellSide];
      for (int u = 0; u < kCellSide; ++u) {
        av[u] = pa[u][k * a_k];
        bv[u] = pb[u][k * b_k];
      }
      for (int u = 0; u < kCellSide; ++u) {
        for (int v = 0; v < kCellSide; ++v) acc[u][v] += av[u] * bv[v];
      }
    }
    const bool add = c.identity || c.data != nullptr;
    for (int u = 0; u < kCellSide; ++u) {
      const int i = r0 + kCellRows * u;
      for (int v = 0; v < kCellSide; ++v) {
        const int j = c0 + kCellRows * v;
        if (i >= n || j >= n) continue;
        T value = alpha * acc[u][v];
        if (add) value += beta * c.at(ld, i, j);  // read before the store: c may be out (this cell's own entries)
        out[i * ld + j] = value;
      }
    }
  }

  ATTNKERN_HD_TEMPLATE
  ATTNKERN_HD void product(T* out, const Operand& a, const Operand& b, T alpha, const Operand& c = Operand(),
                           T beta = T(0)) const {
    const int tiles = (n + kProductTile - 1) / kProductTile;
    for (int cell = Lanes::first(); cell < tiles * tiles * kProductCells; cell += Lanes::stride()) {
      product_cell(out, a, b, alpha, c, beta, cell);
    }
    Lanes::sync();
  }

  // The elementwise operations, an entry a lane at a time (a a matrix, not the identity).
  ATTNKERN_HD_TEMPLATE
  ATTNKERN_HD void identity_plus(T* out, const Operand& a, T alpha, T beta) const {
    for (int e = Lanes::first(); e < n * n; e += Lanes::stride()) {
      const int i = e / n, j = e - i * n;
      out[i * ld + j] = alpha * a.at(ld, i, j) + (i == j ? beta : T(0));
    }
    Lanes::sync();
  }

  ATTNKERN_HD_TEMPLATE
  ATTNKERN_HD void accumulate(T* out, const Operand& a, T alpha) const {
    for (int e = Lanes::first(); e < n * n; e += Lanes::stride()) {
      const int i = e / n, j = e - i * n;
      out[i * ld + j] += alpha * a.at(ld, i, j);
    }
    Lanes::sync();
  }
};

}  // namespace covpool
}  // namespace attnkern
