// CUDA kernels of the covpool family (equations in covpool.h).
//
//   covpool           row means, then a tiled Xc·Xcᵀ that centres tiles as it loads them and
//                     computes only the tiles on or above the diagonal (mirroring the rest).
//   covpool_backward  (G + Gᵀ)/M times Xc, tiled, centring on load.
//   sqrtm             one block per matrix: every Newton–Schulz step of covpool.h, forward and
//                     backward, in shared memory (BlockProducts: each product's entries spread over
//                     the block's threads); matrices too large for it go through batched GEMM
//                     (sqrtm_batched_*: the same steps over at::bmm, cuBLAS underneath).
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

constexpr int kTile = 16;             // covariance tiles: kTile × kTile outputs, kTile² threads
constexpr int kMeanThreads = 256;     // one block per row for the row means
constexpr int kSqrtmThreads = 256;    // one block per matrix for Newton–Schulz
constexpr int64_t kMaxGridY = 65535;  // gridDim.y and gridDim.z limit

// mean[r] = mean of x[r, 0..M).
template <typename scalar_t, typename acc_t>
__global__ void row_mean_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ mean, int64_t M) {
  __shared__ acc_t scratch[kMeanThreads];
  const scalar_t* row = x + blockIdx.x * M;
  acc_t sum = 0;
  for (int64_t m = threadIdx.x; m < M; m += blockDim.x) sum += static_cast<acc_t>(row[m]);
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) mean[blockIdx.x] = sum / static_cast<acc_t>(M);
}

// out[b, i, j] = Σ_m xc[b, i, m]·xc[b, j, m] / M for the tile (blockIdx.y, blockIdx.x) when it is
// on or above the diagonal; its mirror image is written too.
template <typename scalar_t, typename acc_t>
__global__ void covariance_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ mean,
                                  scalar_t* __restrict__ out, int64_t C, int64_t M, int64_t batch0) {
  if (blockIdx.y > blockIdx.x) return;  // below the diagonal: written by the mirror tile
  __shared__ acc_t rows_i[kTile][kTile + 1];
  __shared__ acc_t rows_j[kTile][kTile + 1];
  const int64_t b = batch0 + blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile, j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const scalar_t* xb = x + b * C * M;
  const acc_t* mb = mean + b * C;
  // Thread (ty, tx) loads element m0 + tx of rows i0 + ty and j0 + ty.
  const int64_t load_i = i0 + ty, load_j = j0 + ty;
  const acc_t mean_i = load_i < C ? mb[load_i] : acc_t(0);
  const acc_t mean_j = load_j < C ? mb[load_j] : acc_t(0);
  acc_t acc = 0;
  for (int64_t m0 = 0; m0 < M; m0 += kTile) {
    const int64_t m = m0 + tx;
    rows_i[ty][tx] = (load_i < C && m < M) ? static_cast<acc_t>(xb[load_i * M + m]) - mean_i : acc_t(0);
    rows_j[ty][tx] = (load_j < C && m < M) ? static_cast<acc_t>(xb[load_j * M + m]) - mean_j : acc_t(0);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTile; ++k) acc += rows_i[ty][k] * rows_j[tx][k];
    __syncthreads();
  }
  const int64_t i = i0 + ty, j = j0 + tx;
  if (i < C && j < C) {
    const scalar_t value = static_cast<scalar_t>(acc / static_cast<acc_t>(M));
    scalar_t* ob = out + b * C * C;
    ob[i * C + j] = value;
    if (blockIdx.y != blockIdx.x) ob[j * C + i] = value;
  }
}

// grad_x[b, i, m] = Σ_j sym[b, i, j]·(x[b, j, m] − mean[b, j]), sym = (G + Gᵀ)/M.
template <typename scalar_t, typename acc_t>
__global__ void covpool_backward_kernel(const acc_t* __restrict__ sym, const scalar_t* __restrict__ x,
                                        const acc_t* __restrict__ mean, scalar_t* __restrict__ grad_x,
                                        int64_t C, int64_t M, int64_t batch0) {
  __shared__ acc_t sym_tile[kTile][kTile + 1];
  __shared__ acc_t xc_tile[kTile][kTile + 1];
  const int64_t b = batch0 + blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * kTile + ty;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kTile + tx;
  const acc_t* sb = sym + b * C * C;
  const scalar_t* xb = x + b * C * M;
  const acc_t* mb = mean + b * C;
  acc_t acc = 0;
  for (int64_t j0 = 0; j0 < C; j0 += kTile) {
    const int64_t sym_col = j0 + tx, xc_row = j0 + ty;
    sym_tile[ty][tx] = (i < C && sym_col < C) ? sb[i * C + sym_col] : acc_t(0);
    xc_tile[ty][tx] = (xc_row < C && m < M) ? static_cast<acc_t>(xb[xc_row * M + m]) - mb[xc_row] : acc_t(0);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTile; ++k) acc += sym_tile[ty][k] * xc_tile[k][tx];
    __syncthreads();
  }
  if (i < C && m < M) grad_x[b * C * M + i * M + m] = static_cast<scalar_t>(acc);
}

// ---- Newton–Schulz in one block ------------------------------------------------------------

// The steps of covpool.h on one n×n matrix, each product's entries spread over the block's threads
// (every thread of the block calls each product; it returns after a barrier).
struct BlockLanes {
  __device__ static int first() { return threadIdx.x; }
  __device__ static int stride() { return blockDim.x; }
  __device__ static void sync() { __syncthreads(); }
};

template <typename acc_t>
using BlockProducts = SquareProducts<acc_t, BlockLanes>;

// Loads a[b] into Y and returns its trace (0 when the matrix is to be skipped).
template <typename scalar_t, typename acc_t>
__device__ acc_t load_matrix(const scalar_t* a, acc_t* Y, int n, acc_t* scratch) {
  acc_t diag = 0;
  for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
    Y[e] = static_cast<acc_t>(a[e]);
    if (e / n == e % n) diag += Y[e];
  }
  return block_sum(diag, scratch);  // includes the barrier after the loads
}

template <typename acc_t>
__device__ void store_matrix(acc_t* dst, const acc_t* src, int n) {
  for (int e = threadIdx.x; e < n * n; e += blockDim.x) dst[e] = src[e];
}

// Runs the iteration from Y = A = a/t, Z = I up to Y_f, Z_f (left in *Y, *Z; T and W are work
// space). With `iterates` non-null (this matrix's first slot; slots are `slot_stride` apart, the
// layout of covpool.h), stores Yₖ, Zₖ, Tₖ (k < f) and Y_f, Z_f.
template <typename acc_t>
__device__ void newton_schulz_iterate(acc_t*& Y, acc_t*& Z, acc_t*& T, acc_t*& W, int n, int iters,
                                      acc_t* iterates, int64_t slot_stride) {
  const BlockProducts<acc_t> m{n};
  for (int k = 0; k + 1 < iters; ++k) {
    // Yₖ and Zₖ are stored before the step (whose first product reads them and writes T only), Tₖ after
    // it, with a barrier before the next step writes T again.
    acc_t* slot = iterates != nullptr ? iterates + 3 * k * slot_stride : nullptr;
    if (slot != nullptr) {
      store_matrix(slot, Y, n);
      store_matrix(slot + slot_stride, Z, n);
    }
    newton_schulz_step_in_place(m, Y, Z, T, W);
    if (slot != nullptr) {
      store_matrix(slot + 2 * slot_stride, T, n);
      __syncthreads();
    }
  }
  if (iterates != nullptr) {
    acc_t* slot = iterates + 3 * (iters - 1) * slot_stride;
    store_matrix(slot, Y, n);
    store_matrix(slot + slot_stride, Z, n);
    __syncthreads();
  }
}

// One block per matrix; with `iterates` non-null also saves the iterates for the backward.
template <typename scalar_t, typename acc_t>
__global__ void sqrtm_forward_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out,
                                     acc_t* __restrict__ iterates, int n, int iters) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int nn = n * n;
  acc_t *Y = smem, *Z = smem + nn, *T = smem + 2 * nn, *W = smem + 3 * nn, *scratch = smem + 4 * nn;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * nn;
  const acc_t t = load_matrix(a + offset, Y, n, scratch);
  if (t == acc_t(0)) {  // zero trace: the square root is defined as 0 (the backward skips it too)
    for (int e = threadIdx.x; e < nn; e += blockDim.x) out[offset + e] = scalar_t(0);
    if (iterates != nullptr) {
      for (int64_t s = 0; s < 3 * iters - 1; ++s) {
        for (int e = threadIdx.x; e < nn; e += blockDim.x) iterates[s * gridDim.x * nn + offset + e] = acc_t(0);
      }
    }
    return;
  }
  for (int e = threadIdx.x; e < nn; e += blockDim.x) {
    Y[e] /= t;
    Z[e] = (e / n == e % n) ? acc_t(1) : acc_t(0);
  }
  __syncthreads();
  newton_schulz_iterate(Y, Z, T, W, n, iters, iterates == nullptr ? iterates : iterates + offset,
                        static_cast<int64_t>(gridDim.x) * nn);
  newton_schulz_final(BlockProducts<acc_t>{n}, Y, Z, /*zy=*/T, /*p=*/W);
  const acc_t scale = sqrt(t);
  for (int e = threadIdx.x; e < nn; e += blockDim.x) out[offset + e] = static_cast<scalar_t>(W[e] * scale);
}

// Backward of sqrtm_forward_kernel, one block per matrix. `iterates_all` holds the forward's saved
// iterates, or (recompute) is work space the iteration is first run into.
template <typename scalar_t, typename acc_t>
__global__ void sqrtm_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ a,
                                      scalar_t* __restrict__ grad_a, acc_t* __restrict__ iterates_all,
                                      bool recompute, int n, int iters) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int nn = n * n;
  acc_t *b0 = smem, *b1 = smem + nn, *b2 = smem + 2 * nn, *b3 = smem + 3 * nn, *scratch = smem + 4 * nn;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * nn;
  const int64_t slot_stride = static_cast<int64_t>(gridDim.x) * nn;
  acc_t* iterates = iterates_all + offset;  // this matrix's slot 0
  const acc_t t = load_matrix(a + offset, b0, n, scratch);
  if (t == acc_t(0)) {
    for (int e = threadIdx.x; e < nn; e += blockDim.x) grad_a[offset + e] = scalar_t(0);
    return;
  }
  if (recompute) {
    for (int e = threadIdx.x; e < nn; e += blockDim.x) {
      b0[e] /= t;
      b1[e] = (e / n == e % n) ? acc_t(1) : acc_t(0);
    }
    __syncthreads();
    acc_t *Y = b0, *Z = b1, *T = b2, *W = b3;
    newton_schulz_iterate(Y, Z, T, W, n, iters, iterates, slot_stride);
  }
  const BlockProducts<acc_t> m{n};
  const acc_t* Yf = iterates + 3 * (iters - 1) * slot_stride;
  const acc_t* Zf = Yf + slot_stride;
  const acc_t s = sqrt(t);

  // The final step P = 1.5·Y_f − ½·Y_f·(Z_f·Y_f) (P in gY's matrix until gY is written), ⟨G, P⟩,
  // Gp = ∂L/∂P = G·√t, and the final step's gradient.
  acc_t *ZY = b0, *Gp = b1, *gY = b2, *gZ = b3;
  newton_schulz_final(m, Yf, Zf, ZY, /*p=*/gY);
  acc_t g_dot_p = 0;
  for (int e = threadIdx.x; e < nn; e += blockDim.x) {
    const acc_t g = static_cast<acc_t>(grad[offset + e]);
    g_dot_p += g * gY[e];
    Gp[e] = g * s;
  }
  g_dot_p = block_sum(g_dot_p, scratch);  // its barriers end the reads of P
  newton_schulz_final_backward(m, Gp, Yf, ZY, gY, gZ, /*work=*/ZY);

  // Reverse the steps (Z₀ = I needs no gradient).
  acc_t *gT = b0, *spare = b1;
  for (int k = iters - 2; k >= 0; --k) {
    const acc_t* Yk = iterates + 3 * k * slot_stride;
    newton_schulz_step_backward_in_place(m, Yk, Yk + slot_stride, Yk + 2 * slot_stride, gY, gZ, gT, spare,
                                         /*z_grad=*/k > 0);
  }

  // gY = ∂L/∂A; A = Y₀ is the first stored iterate.
  const acc_t* A = iterates;
  acc_t ga_dot_a = 0;
  for (int e = threadIdx.x; e < nn; e += blockDim.x) ga_dot_a += gY[e] * A[e];
  ga_dot_a = block_sum(ga_dot_a, scratch);
  const acc_t coef = trace_grad_coefficient(ga_dot_a, g_dot_p, t);
  for (int e = threadIdx.x; e < nn; e += blockDim.x) {
    const acc_t value = gY[e] / t + ((e / n == e % n) ? coef : acc_t(0));
    grad_a[offset + e] = static_cast<scalar_t>(value);
  }
}

// Shared memory of the one-block kernels: four n×n matrices and the reduction scratch.
template <typename acc_t>
int64_t sqrtm_smem_bytes(int64_t n) {
  return (4 * n * n + kSqrtmThreads) * static_cast<int64_t>(sizeof(acc_t));
}

template <typename acc_t>
bool sqrtm_fits_one_block(int64_t n) {
  return sqrtm_smem_bytes<acc_t>(n) <= max_shared_memory_optin();
}

// ---- host wrappers ---------------------------------------------------------------------------

at::Tensor row_means(const at::Tensor& x) {  // x contiguous [B, C, M] -> [B, C] in opmath type
  const int64_t rows = x.size(0) * x.size(1), M = x.size(2);
  auto mean = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::toOpMathType(x.scalar_type())));
  if (rows == 0) return mean;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "covpool_row_means", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ATTNKERN_LAUNCH(rows, kMeanThreads, 0, stream, row_mean_kernel<scalar_t, acc_t>)(
        x.const_data_ptr<scalar_t>(), mean.mutable_data_ptr<acc_t>(), M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return mean;
}

at::Tensor covpool_cuda(const at::Tensor& x_in) {
  check_covpool_input(x_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  const int64_t batch = x.size(0), C = x.size(1), M = x.size(2);
  auto out = at::empty({batch, C, C}, x.options());
  if (out.numel() == 0) return out;
  auto mean = row_means(x);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t tiles = ceil_div(C, kTile);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "covpool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridY) {
      const dim3 grid(tiles, tiles, std::min(batch - b0, kMaxGridY));
      ATTNKERN_LAUNCH(grid, dim3(kTile, kTile), 0, stream, covariance_kernel<scalar_t, acc_t>)(
          x.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), C, M, b0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

at::Tensor covpool_backward_cuda(const at::Tensor& grad, const at::Tensor& x_in) {
  check_covpool_input(x_in);
  const int64_t batch = x_in.size(0), C = x_in.size(1), M = x_in.size(2);
  check_grad(grad, "covpool_backward: grad", {batch, C, C}, x_in, "x");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  auto grad_x = at::empty_like(x);
  if (grad_x.numel() == 0) return grad_x;
  auto mean = row_means(x);
  auto g = grad.to(mean.scalar_type());
  auto sym = (g + g.transpose(1, 2)).div_(static_cast<double>(M)).contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "covpool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridY) {
      const dim3 grid(ceil_div(M, kTile), ceil_div(C, kTile), std::min(batch - b0, kMaxGridY));
      ATTNKERN_LAUNCH(grid, dim3(kTile, kTile), 0, stream, covpool_backward_kernel<scalar_t, acc_t>)(
          sym.const_data_ptr<acc_t>(), x.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(),
          grad_x.mutable_data_ptr<scalar_t>(), C, M, b0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return grad_x;
}

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
    if (!sqrtm_fits_one_block<acc_t>(n)) {
      result = sqrtm_batched_forward(a, iters, save_iterates);
      return;
    }
    auto out = at::empty_like(a);
    auto iterates = save_iterates ? iterates_alloc(a, iters) : iterates_empty(a);
    const int64_t smem = sqrtm_smem_bytes<acc_t>(n);
    allow_smem(sqrtm_forward_kernel<scalar_t, acc_t>, smem);
    ATTNKERN_LAUNCH(batch, kSqrtmThreads, smem, c10::cuda::getCurrentCUDAStream(),
                    sqrtm_forward_kernel<scalar_t, acc_t>)(
        a.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        save_iterates ? iterates.mutable_data_ptr<acc_t>() : nullptr, n, iters);
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
    if (!sqrtm_fits_one_block<acc_t>(n)) {
      grad_a = sqrtm_batched_backward(grad, a, saved, iters);
      return;
    }
    const bool recompute = saved.numel() == 0;
    auto iterates = recompute ? iterates_alloc(a, iters) : saved.contiguous();
    if (!recompute) check_saved_iterates(iterates, a, iters);
    grad_a = at::empty_like(a);
    const int64_t smem = sqrtm_smem_bytes<acc_t>(n);
    allow_smem(sqrtm_backward_kernel<scalar_t, acc_t>, smem);
    ATTNKERN_LAUNCH(batch, kSqrtmThreads, smem, c10::cuda::getCurrentCUDAStream(),
                    sqrtm_backward_kernel<scalar_t, acc_t>)(
        grad.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), grad_a.mutable_data_ptr<scalar_t>(),
        iterates.mutable_data_ptr<acc_t>(), recompute, n, iters);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_a;
}

template <typename scalar_t>
__global__ void triuvec_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out, int64_t n,
                               int64_t len, int64_t total) {
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {
    const int64_t b = idx / len;
    int64_t i, j;
    triu_row_col(idx % len, i, j);
    out[idx] = a[(b * n + i) * n + j];
  }
}

template <typename scalar_t>
__global__ void triuvec_backward_kernel(const scalar_t* __restrict__ grad, scalar_t* __restrict__ grad_a,
                                        int64_t n, int64_t len, int64_t total) {
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {
    const int64_t b = idx / (n * n), i = (idx / n) % n, j = idx % n;
    grad_a[idx] = j <= i ? grad[b * len + triu_index(i, j)] : scalar_t(0);
  }
}

at::Tensor triuvec_cuda(const at::Tensor& a_in) {
  check_triuvec_input(a_in);
  c10::cuda::CUDAGuard guard(a_in.device());
  auto a = a_in.contiguous();
  const int64_t batch = a.size(0), n = a.size(1), len = n * (n + 1) / 2;
  auto out = at::empty({batch, len}, a.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "triuvec_cuda", [&] {
    ATTNKERN_LAUNCH(element_blocks(total), kElementThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    triuvec_kernel<scalar_t>)(
        a.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, len, total);
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
  const int64_t total = grad_a.numel();
  if (total == 0) return grad_a;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "triuvec_backward_cuda", [&] {
    ATTNKERN_LAUNCH(element_blocks(total), kElementThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    triuvec_backward_kernel<scalar_t>)(
        grad.const_data_ptr<scalar_t>(), grad_a.mutable_data_ptr<scalar_t>(), n, len, total);
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
