// CUDA kernels of the covpool family (equations in covpool.h).
//
//   covpool           Xc = X − μ (ATen: the row means and one subtraction, both in float64), then
//                     Σ = Xc·Xcᵀ/M by one batched GEMM (at::baddbmm: cuBLAS). Centring first keeps
//                     float32 accurate where X·Xᵀ/M − μ·μᵀ would cancel digits for |μ| ≫ σ.
//   covpool_backward  ∂L/∂X = (G + Gᵀ)·Xc/M: the same centring, then one batched GEMM.
//   sqrtm             n ≤ 64: one block per matrix, every Newton–Schulz step of covpool.h, forward and
//                     backward, in shared memory (each product one 64×64 tile, a 4×4 cell of it a
//                     thread; rows an odd stride apart, so the transposed operands of the backward read
//                     as conflict-free as the others); the backward copies the saved Yₖ, Zₖ, Tₖ into
//                     shared memory step by step. Larger matrices (and those whose matrices do not fit
//                     the block's shared memory) go through batched GEMM (sqrtm_batched_*: the same
//                     steps over at::bmm, cuBLAS underneath) — see sqrtm_one_block.
//   triuvec           a gather and its scatter.
// All accumulation is in at::opmath_type (float for half/bfloat16/float, double for double).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "covpool/covpool.h"
#include "covpool/covpool_checks.h"

namespace attnkern {
namespace covpool {
namespace {

// ---- covariance: centring in ATen, the products in cuBLAS ---------------------------------------

// Xc = X − μ for contiguous or strided x [B, C, M], stored in x's dtype (contiguous). μ (the row means)
// and the difference are computed in float64: a μ rounded to float32 is off by up to ε·|μ|, an offset
// every centred value would carry — harmless to Σ (it enters squared) but passed on linearly to the
// gradient (relative error ε·|μ|/σ, 6·10⁻⁴ for a mean 10⁴ times the spread). Two memory-bound passes
// over x, both spread over the whole GPU by ATen (a row of 40 000 positions is reduced by many blocks).
at::Tensor centred(const at::Tensor& x) {
  auto mean = at::mean(x, {2}, /*keepdim=*/true, at::kDouble);
  auto xc = at::empty(x.sizes(), x.options());
  at::sub_out(xc, x, mean);  // computed in the common dtype (float64), rounded once to xc's
  return xc;
}

at::Tensor covpool_cuda(const at::Tensor& x) {
  check_covpool_input(x);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), C = x.size(1), M = x.size(2);
  auto out = at::empty({batch, C, C}, x.options());
  if (out.numel() == 0) return out;
  auto xc = centred(x);
  // β = 0: out's (uninitialised) values are not read.
  at::baddbmm_out(out, out, xc, xc.transpose(1, 2), /*beta=*/0, /*alpha=*/1.0 / static_cast<double>(M));
  return out;
}

at::Tensor covpool_backward_cuda(const at::Tensor& grad, const at::Tensor& x) {
  check_covpool_input(x);
  const int64_t batch = x.size(0), C = x.size(1), M = x.size(2);
  check_grad(grad, "covpool_backward: grad", {batch, C, C}, x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  auto grad_x = at::empty({batch, C, M}, x.options());
  if (grad_x.numel() == 0) return grad_x;
  auto xc = centred(x);
  auto sym = at::add(grad, grad.transpose(1, 2));
  at::baddbmm_out(grad_x, grad_x, sym, xc, /*beta=*/0, /*alpha=*/1.0 / static_cast<double>(M));
  return grad_x;
}

// ---- Newton–Schulz in one block ------------------------------------------------------------

// One product cell a thread: each product is a single 64×64 tile (covpool.h), so n ≤ kSqrtmMaxN.
constexpr int kSqrtmThreads = kProductCells;
constexpr int kSqrtmMaxN = kProductTile;
// The n×n matrices each kernel keeps in shared memory: Y, Z, T and a spare (forward); the gradients
// gY, gZ, gT, a spare and the step's Yₖ, Zₖ, Tₖ (backward).
constexpr int kForwardMatrices = 4;
constexpr int kBackwardMatrices = 7;

// Row stride of the shared matrices: odd, so that a warp's reads of a column are conflict-free.
int sqrtm_ld(int64_t n) { return static_cast<int>(n | 1); }

// The steps of covpool.h on one n×n matrix, each product's cells spread over the block's threads
// (every thread of the block calls each product; it returns after a barrier).
struct BlockLanes {
  __device__ static int first() { return threadIdx.x; }
  __device__ static int stride() { return blockDim.x; }
  __device__ static void sync() { __syncthreads(); }
};

template <typename acc_t>
using BlockProducts = SquareProducts<acc_t, BlockLanes>;

// Loads the contiguous n×n matrix a into the shared matrix Y (rows ld apart) and returns its trace (0
// when the matrix is to be skipped).
template <typename scalar_t, typename acc_t>
__device__ acc_t load_matrix(const scalar_t* a, acc_t* Y, int n, int ld, acc_t* scratch) {
  acc_t diag = 0;
  for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
    const int i = e / n, j = e - i * n;
    const acc_t value = static_cast<acc_t>(a[e]);
    Y[i * ld + j] = value;
    if (i == j) diag += value;
  }
  return block_sum(diag, scratch);  // includes the barrier after the loads
}

// dst (contiguous, global) = src (shared, rows ld apart), or the other way round.
template <typename acc_t>
__device__ void store_matrix(acc_t* dst, const acc_t* src, int n, int ld) {
  for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
    const int i = e / n;
    dst[e] = src[i * ld + (e - i * n)];
  }
}

template <typename acc_t>
__device__ void fetch_matrix(acc_t* dst, const acc_t* src, int n, int ld) {
  for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
    const int i = e / n;
    dst[i * ld + (e - i * n)] = src[e];
  }
}

// The step-0 iterates into the shared Y and Z (rows ld apart): Y₀ = A = a/t, Z₀ = I. Returns the trace t
// (0: the matrix is skipped, Y and Z are not set).
template <typename scalar_t, typename acc_t>
__device__ acc_t load_start(const scalar_t* a, acc_t* Y, acc_t* Z, int n, int ld, acc_t* scratch) {
  const acc_t t = load_matrix(a, Y, n, ld, scratch);
  if (t == acc_t(0)) return t;  // the same t in every thread: the block leaves together
  for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
    const int i = e / n, j = e - i * n;
    Y[i * ld + j] /= t;
    Z[i * ld + j] = i == j ? acc_t(1) : acc_t(0);
  }
  __syncthreads();
  return t;
}

// Runs the iteration from Y = A, Z = I up to Y_f, Z_f (left in *Y, *Z; T and W are work space). With
// `iterates` non-null (this matrix's first slot; slots are `slot_stride` apart, the layout of covpool.h),
// stores each step's Tₖ, Yₖ₊₁, Zₖ₊₁ (step 0: T₀, which is Z₁ and in Z's matrix, and Y₁).
template <typename acc_t>
__device__ void newton_schulz_iterate(acc_t*& Y, acc_t*& Z, acc_t*& T, acc_t*& W, int n, int ld, int iters,
                                      acc_t* iterates, int64_t slot_stride) {
  const BlockProducts<acc_t> m{n, ld};
  for (int k = 0; k + 1 < iters; ++k) {
    if (k == 0) {
      newton_schulz_first_step_in_place(m, Y, Z, T, W);
    } else {
      newton_schulz_step_in_place(m, Y, Z, T, W);
    }
    if (iterates != nullptr) {  // a barrier after the stores: the next step (or the final one) writes T and W
      store_matrix(iterates + saved_slot(k, kSavedT) * slot_stride, k == 0 ? Z : T, n, ld);
      store_matrix(iterates + saved_slot(k, kSavedY) * slot_stride, Y, n, ld);
      if (k > 0) store_matrix(iterates + saved_slot(k, kSavedZ) * slot_stride, Z, n, ld);
      __syncthreads();
    }
  }
}

// Step k's Yₖ and Zₖ into the shared Y and Z: saved by step k − 1, or (k = 0) formed from a again.
template <typename scalar_t, typename acc_t>
__device__ void fetch_step_start(acc_t* Y, acc_t* Z, const acc_t* iterates, int64_t slot_stride, int k,
                                 const scalar_t* a, int n, int ld, acc_t* scratch) {
  if (k == 0) {
    load_start(a, Y, Z, n, ld, scratch);
  } else {
    fetch_matrix(Y, iterates + saved_slot(k - 1, kSavedY) * slot_stride, n, ld);
    fetch_matrix(Z, iterates + saved_slot(k - 1, kSavedZ) * slot_stride, n, ld);
  }
}

// One block per matrix; with `iterates` non-null also saves the iterates for the backward.
template <typename scalar_t, typename acc_t>
__global__ void sqrtm_forward_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out,
                                     acc_t* __restrict__ iterates, int n, int ld, int iters) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int nn = n * n, mm = n * ld;
  acc_t *Y = smem, *Z = smem + mm, *T = smem + 2 * mm, *W = smem + 3 * mm, *scratch = smem + 4 * mm;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * nn;
  const acc_t t = load_start(a + offset, Y, Z, n, ld, scratch);
  if (t == acc_t(0)) {  // zero trace: the square root is defined as 0 (the backward skips it too)
    for (int e = threadIdx.x; e < nn; e += blockDim.x) out[offset + e] = scalar_t(0);
    if (iterates != nullptr) {
      for (int64_t s = 0; s < saved_iterate_count(iters); ++s) {
        for (int e = threadIdx.x; e < nn; e += blockDim.x) iterates[s * gridDim.x * nn + offset + e] = acc_t(0);
      }
    }
    return;
  }
  newton_schulz_iterate(Y, Z, T, W, n, ld, iters, iterates == nullptr ? iterates : iterates + offset,
                        static_cast<int64_t>(gridDim.x) * nn);
  newton_schulz_final(BlockProducts<acc_t>{n, ld}, Y, Z, /*zy=*/T, /*p=*/W);
  const acc_t scale = sqrt(t);
  for (int e = threadIdx.x; e < nn; e += blockDim.x) {
    const int i = e / n;
    out[offset + e] = static_cast<scalar_t>(W[i * ld + (e - i * n)] * scale);
  }
}

// Backward of sqrtm_forward_kernel, one block per matrix. `iterates_all` holds the forward's saved
// iterates, or (recompute) is work space the iteration is first run into.
template <typename scalar_t, typename acc_t>
__global__ void sqrtm_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ a,
                                      scalar_t* __restrict__ grad_a, acc_t* __restrict__ iterates_all,
                                      bool recompute, int n, int ld, int iters) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int nn = n * n, mm = n * ld;
  acc_t *b0 = smem, *b1 = smem + mm, *b2 = smem + 2 * mm, *b3 = smem + 3 * mm;
  acc_t *Ys = smem + 4 * mm, *Zs = smem + 5 * mm, *Ts = smem + 6 * mm, *scratch = smem + 7 * mm;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * nn;
  const int64_t slot_stride = static_cast<int64_t>(gridDim.x) * nn;
  // This matrix's slot 0 (none with one iteration: nothing is saved).
  acc_t* iterates = iterates_all != nullptr ? iterates_all + offset : nullptr;
  const acc_t t = load_start(a + offset, b0, b1, n, ld, scratch);
  if (t == acc_t(0)) {
    for (int e = threadIdx.x; e < nn; e += blockDim.x) grad_a[offset + e] = scalar_t(0);
    return;
  }
  if (recompute) {
    acc_t *Y = b0, *Z = b1, *T = b2, *W = b3;
    newton_schulz_iterate(Y, Z, T, W, n, ld, iters, iterates, slot_stride);
  }
  const BlockProducts<acc_t> m{n, ld};
  const acc_t s = sqrt(t);

  // The final step's gradient from Gp = ∂L/∂P = G·√t, and ⟨G, P⟩ = ⟨gY, Y_f⟩/√t between its two parts
  // (covpool.h: P is not formed).
  acc_t *ZY = b0, *Gp = b1, *gY = b2, *gZ = b3;
  fetch_step_start(Ys, Zs, iterates, slot_stride, iters - 1, a + offset, n, ld, scratch);
  __syncthreads();
  newton_schulz_final_zy(m, Ys, Zs, ZY);
  for (int e = threadIdx.x; e < nn; e += blockDim.x) {
    const int i = e / n;
    Gp[i * ld + (e - i * n)] = static_cast<acc_t>(grad[offset + e]) * s;
  }
  __syncthreads();
  newton_schulz_final_backward_first(m, Gp, ZY, gY);
  acc_t gy_dot_y = 0;
  for (int e = threadIdx.x; e < nn; e += blockDim.x) {
    const int i = e / n, ij = i * ld + (e - i * n);
    gy_dot_y += gY[ij] * Ys[ij];
  }
  const acc_t g_dot_p = block_sum(gy_dot_y, scratch) / s;  // its barriers end the reads of gY
  newton_schulz_final_backward_rest(m, Gp, Ys, ZY, gY, gZ, /*work=*/ZY);

  // Reverse the steps, each with its Yₖ, Zₖ, Tₖ copied into shared memory, Y₀ (and Z₀ = I, which step 0
  // reversed does not read) formed from a; the previous product's barrier has ended the reads of the last ones.
  acc_t *gT = b0, *spare = b1;
  for (int k = iters - 2; k >= 0; --k) {
    fetch_step_start(Ys, Zs, iterates, slot_stride, k, a + offset, n, ld, scratch);
    fetch_matrix(Ts, iterates + saved_slot(k, kSavedT) * slot_stride, n, ld);
    __syncthreads();
    if (k > 0) {
      newton_schulz_step_backward_in_place(m, Ys, Zs, Ts, gY, gZ, gT, spare);
    } else {
      newton_schulz_first_step_backward_in_place(m, Ys, Ts, gY, gZ, gT, spare);
    }
  }

  // gY = ∂L/∂A; A = Y₀ is in Ys (the last step reversed fetched it; with one iteration Y_f is Y₀).
  acc_t ga_dot_a = 0;
  for (int e = threadIdx.x; e < nn; e += blockDim.x) {
    const int i = e / n, ij = i * ld + (e - i * n);
    ga_dot_a += gY[ij] * Ys[ij];
  }
  ga_dot_a = block_sum(ga_dot_a, scratch);
  const acc_t coef = trace_grad_coefficient(ga_dot_a, g_dot_p, t);
  for (int e = threadIdx.x; e < nn; e += blockDim.x) {
    const int i = e / n, j = e - i * n;
    const acc_t value = gY[i * ld + j] / t + (i == j ? coef : acc_t(0));
    grad_a[offset + e] = static_cast<scalar_t>(value);
  }
}

// Shared memory of a one-block kernel: `matrices` n×n matrices, rows sqrtm_ld(n) apart, and the
// reduction scratch.
template <typename acc_t>
int64_t sqrtm_smem_bytes(int64_t n, int matrices) {
  return (matrices * n * sqrtm_ld(n) + kSqrtmThreads) * static_cast<int64_t>(sizeof(acc_t));
}

// Whether a one-block kernel keeping `matrices` matrices runs n×n matrices: n ≤ 64 (each product one
// tile of one cell a thread) and its shared memory fits the device's opt-in. The size threshold is the
// model's (benchmarks/perf_model.py, covpool section; H200, float32): at n = 64 a product's 64³ FMAs
// take ~2.4 µs on one SM (shared-load bound) against ≥ 4 µs a launch for each bmm of the batched path:
// 5 iterations 32.5 µs forward, 65 µs backward against 87 / 175 µs batched (plain PyTorch 144 / 246),
// for 1 to 132 matrices alike. Past 64 a product's time on one SM grows as n³ (~8 µs at n = 96, what a
// batched product costs there), so the one-block path stops at one tile.
template <typename acc_t>
bool sqrtm_one_block(int64_t n, int matrices) {
  return n <= kSqrtmMaxN && sqrtm_smem_bytes<acc_t>(n, matrices) <= max_shared_memory_optin();
}

// ---- host wrappers ---------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> sqrtm_newton_schulz_cuda(const at::Tensor& a_in, int64_t iters,
                                                             bool save_iterates) {
  check_sqrtm_input(a_in, iters);
  c10::cuda::CUDAGuard guard(a_in.device());
  auto a = a_in.contiguous();
  const int64_t batch = a.size(0), n = a.size(1);
  if (a.numel() == 0) return sqrtm_batched_forward(a, iters, save_iterates);
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "sqrtm_newton_schulz_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (!sqrtm_one_block<acc_t>(n, kForwardMatrices)) {
      result = sqrtm_batched_forward(a, iters, save_iterates);
      return;
    }
    auto out = at::empty_like(a);
    auto iterates = save_iterates ? iterates_alloc(a, iters) : iterates_empty(a);
    const int64_t smem = sqrtm_smem_bytes<acc_t>(n, kForwardMatrices);
    allow_smem(sqrtm_forward_kernel<scalar_t, acc_t>, smem);
    ATTNKERN_LAUNCH(batch, kSqrtmThreads, smem, c10::cuda::getCurrentCUDAStream(),
                    sqrtm_forward_kernel<scalar_t, acc_t>)(
        a.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        save_iterates ? iterates.mutable_data_ptr<acc_t>() : nullptr, n, sqrtm_ld(n), iters);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    result = {out, iterates};
  });
  return result;
}

at::Tensor sqrtm_newton_schulz_backward_cuda(const at::Tensor& grad_in, const at::Tensor& a_in,
                                             const at::Tensor& saved, int64_t iters) {
  check_sqrtm_input(a_in, iters);
  check_grad(grad_in, "sqrtm_newton_schulz_backward: grad", a_in.sizes(), a_in, "a");
  c10::cuda::CUDAGuard guard(a_in.device());
  auto a = a_in.contiguous();
  auto grad = grad_in.contiguous();
  const int64_t batch = a.size(0), n = a.size(1);
  if (a.numel() == 0) return at::zeros_like(a);
  at::Tensor grad_a;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "sqrtm_newton_schulz_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (!sqrtm_one_block<acc_t>(n, kBackwardMatrices)) {
      grad_a = sqrtm_batched_backward(grad, a, saved, iters);
      return;
    }
    const bool recompute = saved.numel() == 0;
    auto iterates = recompute ? iterates_alloc(a, iters) : saved.contiguous();
    if (!recompute) check_saved_iterates(iterates, a, iters);
    grad_a = at::empty_like(a);
    const int64_t smem = sqrtm_smem_bytes<acc_t>(n, kBackwardMatrices);
    allow_smem(sqrtm_backward_kernel<scalar_t, acc_t>, smem);
    ATTNKERN_LAUNCH(batch, kSqrtmThreads, smem, c10::cuda::getCurrentCUDAStream(),
                    sqrtm_backward_kernel<scalar_t, acc_t>)(
        grad.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), grad_a.mutable_data_ptr<scalar_t>(),
        iterates.mutable_data_ptr<acc_t>(), recompute, n, sqrtm_ld(n), iters);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_a;
}

// A block a row (b, i) of a: its entries j ≤ i are contiguous there and in the output (from triu_index(i, 0)).
template <typename scalar_t>
__global__ void triuvec_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out, int64_t n, int64_t len,
                               int64_t rows) {
  ATTNKERN_BLOCK_STRIDE_LOOP(row, rows) {  // row = b·n + i
    const int64_t b = row / n, i = row % n;
    const scalar_t* src = a + row * n;
    scalar_t* dst = out + b * len + triu_index(i, 0);
    for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) dst[j] = src[j];
  }
}

// A block a row (b, i) of the gradient: the row's j ≤ i entries from the triuvec gradient, zeros past them.
template <typename scalar_t>
__global__ void triuvec_backward_kernel(const scalar_t* __restrict__ grad, scalar_t* __restrict__ grad_a,
                                        int64_t n, int64_t len, int64_t rows) {
  ATTNKERN_BLOCK_STRIDE_LOOP(row, rows) {  // row = b·n + i
    const int64_t b = row / n, i = row % n;
    const scalar_t* src = grad + b * len + triu_index(i, 0);
    scalar_t* dst = grad_a + row * n;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) dst[j] = j <= i ? src[j] : scalar_t(0);
  }
}

at::Tensor triuvec_cuda(const at::Tensor& a_in) {
  check_triuvec_input(a_in);
  c10::cuda::CUDAGuard guard(a_in.device());
  auto a = a_in.contiguous();
  const int64_t batch = a.size(0), n = a.size(1), len = n * (n + 1) / 2;
  auto out = at::empty({batch, len}, a.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "triuvec_cuda", [&] {
    ATTNKERN_LAUNCH(row_blocks(batch * n), row_threads(n), 0, c10::cuda::getCurrentCUDAStream(),
                    triuvec_kernel<scalar_t>)(
        a.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, len, batch * n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor triuvec_backward_cuda(const at::Tensor& grad_in, int64_t n) {
  check_triuvec_grad(grad_in, n);
  const int64_t batch = grad_in.size(0), len = n * (n + 1) / 2;
  c10::cuda::CUDAGuard guard(grad_in.device());
  auto grad = grad_in.contiguous();
  auto grad_a = at::empty({batch, n, n}, grad.options());
  if (grad_a.numel() == 0) return grad_a;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "triuvec_backward_cuda", [&] {
    ATTNKERN_LAUNCH(row_blocks(batch * n), row_threads(n), 0, c10::cuda::getCurrentCUDAStream(),
                    triuvec_backward_kernel<scalar_t>)(
        grad.const_data_ptr<scalar_t>(), grad_a.mutable_data_ptr<scalar_t>(), n, len, batch * n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_a;
}

}  // namespace

ATTNKERN_CUDA_KERNELS(m) {
  m.impl("covpool", &covpool_cuda);
  m.impl("covpool_backward", &covpool_backward_cuda);
  m.impl("sqrtm_newton_schulz", &sqrtm_newton_schulz_cuda);
  m.impl("sqrtm_newton_schulz_backward", &sqrtm_newton_schulz_backward_cuda);
  m.impl("triuvec", &triuvec_cuda);
  m.impl("triuvec_backward", &triuvec_backward_cuda);
}

}  // namespace covpool
}  // namespace attnkern
