// The window-attention backward on tensor cores (fp16, bf16; sm_80 and newer; N ≤ 64, d ≤ 64): the
// gradients of window_attention.h, with P recomputed from the forward's lse.
//
// One block of Np / 16 warps per (window group, head), the group's windows one after another; one wave
// of 3 blocks per SM (mma_backward_groups), each accumulating its own [N, N] bias gradient and writing its slice
// of the [groups, heads, N, N] partials once, summed afterwards (deterministic). A warp's rows and a lane's keys
// are the same in every window, so a lane adds its elements of dS into registers, window after window.
// Per window, q, k, v and dO are loaded as in the forward (mma_load_tiles, four chunks in flight a thread),
// lse and D_i = dO_i·o_i per token, then
//   rows    (warp w: queries 16w … 16w + 15)  S = Q·Kᵀ → logits → P = exp(s − lse) (exp_minus);  dP = dO·Vᵀ;
//           dS = logit_grad(P, dP, D) (window_attention.h); the bias gradient += dS (registers); P and dS,
//           rounded to the input type, into shared tiles; dq = scale·dS·K from the warp's rows of the dS tile;
//   columns (warp w: keys 16w … 16w + 15)     dv = Pᵀ·dO and dk = scale·dSᵀ·Q, the transposed A fragments
//           from the P and dS tiles by ldmatrix.trans;
// dq, dv and dk go through the k, v and q tiles (each warp its own rows, as soon as no warp reads the tile)
// to grad_qkv in vec-element copies.
#pragma once

#include <algorithm>

#include "window_attention/window_attention_mma.cuh"

namespace attnkern {
namespace window_attention {

// Window groups of the backward: enough blocks for one wave of kBackwardBlocksPerSm an SM (what fits an SM
// at the kernel's 161–166 registers a thread and its shared memory on sm_90; every group walks as many
// windows ± 1, so one wave has no tail), at least the SIMT backward's 64 groups, then as few as give every
// group the same number of windows (± 1). Each group writes one [N, N] bias-gradient partial a head, so
// fewer groups move fewer partials: 384 blocks at Swin-T stage 1 and SwinIR (was 1,026 and 768 at 8 an SM).
constexpr int64_t kBackwardBlocksPerSm = 3;

inline int64_t mma_backward_groups(int64_t total_windows, int64_t heads, int64_t sms) {
  const int64_t wanted =
      std::min(total_windows, std::max<int64_t>(64, (kBackwardBlocksPerSm * sms + heads - 1) / heads));
  if (wanted == 0) return 0;
  const int64_t per_group = (total_windows + wanted - 1) / wanted;
  return (total_windows + per_group - 1) / per_group;
}

// The backward's bias tile, which its block walks over all its windows: mma_load_bias's where N is a multiple
// of 8 (N = window²: windows of 4 and 8, N = Np); else a copy of its own, rows Np + 8 values apart (an odd
// multiple of 8: conflict-free, rows g = 0 … 7 of a fragment 4·odd words apart, where rows of N values would
// lie 2-way in the banks) holding −inf past key N, so that the logits need no key test (mma_logits).
ATTNKERN_HD inline int64_t mma_backward_bias_ld(int64_t N) {
  return N % 8 == 0 ? mma_bias_ld(N) : mma_round_up16(N) + 8;
}
ATTNKERN_HD inline int64_t mma_backward_bias_bytes(int64_t N) {
  return N % 8 == 0 ? mma_bias_bytes(N) : (N * mma_backward_bias_ld(N) * 2 + 15) / 16 * 16;
}

// Shared memory of the backward: q, k, v, dO tiles [Np, dp + kMmaRowPad]; P and dS tiles [Np, Np + kMmaRowPad]
// (16-bit), which stage the bias before the first window and the bias gradient [N, mma_bias_grad_ld(N)] (float)
// after the last; the bias region (mma_backward_bias_bytes); with an explicit mask, the window's [N, Np] of it
// in rows mma_bias_grad_ld(N) apart (float: read past key N, as the logits are, and in 32-bit addresses, where
// the mask's own rows cost the kernel its registers); lse, D [Np] (float); pixels (int64) and regions (int) [Np].
struct MmaBackwardLayout {
  int64_t tiles, probabilities, bias, mask, lse, delta, pixel, region, total;

  ATTNKERN_HD MmaBackwardLayout(int64_t N, int64_t d, bool masked) {
    const int64_t Np = mma_round_up16(N), ld = mma_round_up16(d) + kMmaRowPad, ldp = Np + kMmaRowPad;
    tiles = 0;
    probabilities = tiles + 4 * Np * ld * 2;
    int64_t probabilities_bytes = 2 * Np * ldp * 2;  // the P and dS tiles, or what they stage if more (N = 16)
    if (probabilities_bytes < mma_bias_bytes(N)) probabilities_bytes = mma_bias_bytes(N);
    if (probabilities_bytes < N * mma_bias_grad_ld(N) * 4) probabilities_bytes = N * mma_bias_grad_ld(N) * 4;
    bias = probabilities + probabilities_bytes;
    mask = bias + mma_backward_bias_bytes(N);
    lse = mask + (masked ? N * mma_bias_grad_ld(N) * 4 : 0);
    delta = lse + Np * 4;
    pixel = (delta + Np * 4 + 7) / 8 * 8;
    region = pixel + Np * 8;
    total = region + Np * 4;
  }
};

// acc[dt] += X·T (kTransposed: Xᵀ·T) over 16·k_steps rows of T, for the warp's 16 rows row0 … of X (of Xᵀ):
// X a [Np, Np + kMmaRowPad] tile indexed [query][key] (P or dS), T a [Np, ld] tile of k_steps·16 rows (B
// fragments by ldmatrix.trans): dq = dS·K (rows: queries, T indexed [key][channel]); transposed (rows: keys, A
// fragments by ldmatrix.trans, T indexed [query][channel]) dv = Pᵀ·dO, dk = dSᵀ·Q.
template <bool kTransposed, typename scalar_t>
__device__ __forceinline__ void mma_tile_times_tile(MmaAccumulators& acc, const scalar_t* x, int ldp,
                                                    const scalar_t* tile, int ld, int row0, int k_steps,
                                                    int dim_tiles) {
  const int lane = threadIdx.x % 32;
  // A (16 × 16): lane l gives row l % 8 of matrix l / 8. Not transposed: matrix m = (rows 8·(m % 2) …, columns
  // 8·(m / 2) …). Transposed: matrix m = (keys 8·(m % 2) …, queries 8·(m / 2) …), each the transpose of the
  // stored 8×8 block: lane l gives stored row (query) l % 8 + 8·(l / 16), column row0 + 8·((l / 8) % 2).
  const int a_offset = kTransposed ? (lane % 8 + 8 * (lane / 16)) * ldp + row0 + 8 * ((lane / 8) % 2)
                                   : (row0 + lane % 8 + 8 * ((lane / 8) % 2)) * ldp + 8 * (lane / 16);
  const int a_step = kTransposed ? 16 * ldp : 16;
  const int b_row = lane % 8 + 8 * ((lane / 8) % 2);
  for (int kt = 0; kt < k_steps; ++kt) {
    uint32_t fa[4];
    tensor_core::ldmatrix<4, kTransposed>(fa, x + kt * a_step + a_offset);
#pragma unroll
    for (int dt = 0; dt < 8; ++dt) {
      if (dt < dim_tiles) {
        uint32_t fb[2];
        tensor_core::ldmatrix<2, true>(fb, tile + (16 * kt + b_row) * ld + 8 * dt);
        tensor_core::mma_m16n8k16<scalar_t>(acc[dt], fa, fb);
      }
    }
  }
}

// D_i = Σ_c dO_ic·o_ic (logit_grad's row term) for the window's tokens (0 past N): `lanes` adjacent threads a
// token (the power of two ≥ d / vec, at most 32), each vec channels at a time — o in vec-element copies like
// the tiles, dO from its tile — their partial sums added by shuffles in a fixed order.
template <typename scalar_t>
__device__ void mma_row_deltas(const scalar_t* grad_o, int ld, const scalar_t* out, const int64_t* pixel, int64_t h,
                               int heads, int N, int Np, int d, int vec, float* delta) {
  const int chunks = d / vec;
  int lanes = 1;
  while (lanes < chunks && lanes < 32) lanes *= 2;
  const int part = threadIdx.x % lanes;
  for (int first = 0; first < Np; first += blockDim.x / lanes) {  // the same trip count on every thread
    const int i = first + threadIdx.x / lanes;
    float sum = 0.f;
    if (i < N) {
      const scalar_t* o_i = out + out_offset(pixel[i], h, heads, d);
      for (int c = part * vec; c < d; c += lanes * vec) {
        alignas(16) scalar_t o_chunk[8], grad_chunk[8];
        copy_elements(o_chunk, o_i + c, vec);
        copy_elements(grad_chunk, grad_o + i * ld + c, vec);
#pragma unroll
        for (int x = 0; x < 8; ++x) {  // constant indices: the chunks stay in registers
          if (x < vec) sum += static_cast<float>(grad_chunk[x]) * static_cast<float>(o_chunk[x]);
        }
      }
    }
    for (int offset = lanes / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (part == 0 && i < Np) delta[i] = sum;
  }
}

// The head's bias bias_h [N, N] as the backward's tile (mma_backward_bias_ld), zeros where there is no bias
// (null), starting 4-byte aligned (the logits read it a key pair at a time): mma_load_bias's where N is a multiple
// of 8 and bias_h an even number of elements past a 16-byte boundary; else mma_load_bias's copy into `staging` (16
// bytes a copy), then value by value into the tile, −inf past key N. Returns the tile; the caller synchronises
// before reading it or writing `staging`.
template <typename scalar_t>
__device__ const scalar_t* mma_backward_load_bias(unsigned char* region, unsigned char* staging,
                                                  const scalar_t* bias_h, int N) {
  if (N % 8 == 0 && bias_h != nullptr && offset_in_16_bytes(bias_h) % 2 == 0) return mma_load_bias(region, bias_h, N);
  const scalar_t* staged = nullptr;  // rows mma_bias_ld(N) apart
  if (bias_h != nullptr) {  // uniform over the block
    staged = mma_load_bias(staging, bias_h, N);
    __syncthreads();
  }
  scalar_t* tile = reinterpret_cast<scalar_t*>(region);
  const int ld = static_cast<int>(mma_backward_bias_ld(N)), staged_ld = static_cast<int>(mma_bias_ld(N));
  for_each_row_chunk(threadIdx.x, blockDim.x, N, ld, [&](int i, int j) {
    tile[i * ld + j] =
        static_cast<scalar_t>(j >= N ? -INFINITY : staged != nullptr ? float(staged[i * staged_ld + j]) : 0.f);
  });
  return tile;
}

// At most kMmaMaxTokens / 16 warps a block and kBackwardBlocksPerSm blocks an SM: at most 168 registers a
// thread (unbounded, nvcc 13.0 gives the bf16 kernel 208: 2 blocks an SM).
template <typename scalar_t>
__global__ void __launch_bounds__(kMmaMaxTokens / 16 * 32, kBackwardBlocksPerSm)
    mma_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ qkv,
                        const scalar_t* __restrict__ bias, const float* __restrict__ mask,
                        const scalar_t* __restrict__ out, const float* __restrict__ lse,
                        scalar_t* __restrict__ grad_qkv, float* __restrict__ grad_bias_partial, WindowGrid grid,
                        int batch, int heads, int d, int vec, float scale, int groups) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int N = static_cast<int>(grid.tokens()), Np = static_cast<int>(mma_round_up16(N));
  const int dp = static_cast<int>(mma_round_up16(d)), ld = dp + kMmaRowPad, ldp = Np + kMmaRowPad;
  const int64_t nW = grid.windows();
  const int64_t h = blockIdx.x % heads, group = blockIdx.x / heads;
  const MmaBackwardLayout layout(N, d, mask != nullptr);
  scalar_t* q = reinterpret_cast<scalar_t*>(smem_raw + layout.tiles);
  scalar_t* k = q + Np * ld;
  scalar_t* v = k + Np * ld;
  scalar_t* grad_o = v + Np * ld;
  scalar_t* p_tile = reinterpret_cast<scalar_t*>(smem_raw + layout.probabilities);
  scalar_t* ds_tile = p_tile + Np * ldp;
  float* mask_tile = reinterpret_cast<float*>(smem_raw + layout.mask);
  float* lse_w = reinterpret_cast<float*>(smem_raw + layout.lse);
  float* delta = reinterpret_cast<float*>(smem_raw + layout.delta);
  int64_t* pixel = reinterpret_cast<int64_t*>(smem_raw + layout.pixel);
  int* region = reinterpret_cast<int*>(smem_raw + layout.region);

  // the P and dS tiles, not yet used, stage the bias (mma_backward_load_bias)
  const scalar_t* bias_tile = mma_backward_load_bias(smem_raw + layout.bias, smem_raw + layout.probabilities,
                                                     bias != nullptr ? bias + h * N * N : nullptr, N);
  MmaAccumulators bias_grad;  // the lane's elements of the warp's rows of the bias gradient, over the windows
  mma_zero(bias_grad);
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4, row0 = 16 * (threadIdx.x / 32);
  // S and dP over the key tiles that hold a key (7 of Np / 8 = 8 at N = 49)
  const int tiles = (N + 7) / 8, dim_tiles = dp / 8, mask_ld = static_cast<int>(mma_bias_grad_ld(N));
  const int64_t token = 3 * heads * d;
  for (int64_t window = group; window < int64_t(batch) * nW; window += groups) {
    const int64_t b = window / nW, w = window % nW;
    mma_load_tokens(grid, b, w, N, Np, pixel, region);
    if (mask != nullptr) {  // uniform over the block
      const float* mask_w = mask + w * N * N;
      for_each_row_chunk(threadIdx.x, blockDim.x, N, Np, [&](int i, int j) {
        mask_tile[i * mask_ld + j] = j < N ? mask_w[i * N + j] : 0.f;
      });
    }
    __syncthreads();
    for (int i = threadIdx.x; i < Np; i += blockDim.x) lse_w[i] = i < N ? lse[pixel[i] * heads + h] : 0.f;
    mma_load_tiles<4>({q, k, v, grad_o},
                      {qkv + h * d, qkv + (heads + h) * d, qkv + (2 * heads + h) * d, grad + h * d},
                      {token, token, token, int64_t(heads) * d}, pixel, N, Np, d, dp, ld, vec);
    __syncthreads();
    mma_row_deltas(grad_o, ld, out, pixel, h, heads, N, Np, d, vec, delta);
    __syncthreads();

    // Rows: P, dS, the bias gradient, dq. S, its logits, dP = dO·Vᵀ and dS half the key tiles at a time (the
    // bias gradient's registers beside the whole of S and dP spilled). The lane's rows row0 + g and row0 + g + 8
    // (elements 0, 1 and 2, 3 of a tile): their lse and D held in registers, as the tile stores could alias them
    // for the compiler.
    const float lse_log2e[2] = {lse_w[row0 + g] * kLog2e, lse_w[row0 + g + 8] * kLog2e};
    const float row_delta[2] = {delta[row0 + g], delta[row0 + g + 8]};
    MmaAccumulators s, dprob;
#pragma unroll
    for (int first = 0; first < 8; first += 4) {
      const int end = min(first + 4, tiles);
#pragma unroll
      for (int nt = first; nt < first + 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = dprob[nt][e] = 0.f;
      }
      mma_rows_times_rows(s, q, k, ld, dp, first, end, row0);
      mma_logits</*kSettled=*/false, /*kKeysPadded=*/true>(s, row0, N, first, end, scale, bias_tile,
                                                           static_cast<int>(mma_backward_bias_ld(N)),
                                                           mask != nullptr ? mask_tile : nullptr, mask_ld,
                                                           grid.shift > 0 ? region : nullptr);
      mma_rows_times_rows(dprob, grad_o, v, ld, dp, first, end, row0);
#pragma unroll
      for (int nt = first; nt < first + 4; ++nt) {
        if (nt >= Np / 8) continue;  // uniform over the block
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          // past key N the logit is −inf: P = 0, dS = 0; a tile with no key (N = 49: keys 56–63) is not formed,
          // its zeros stored all the same, as dq reads the dS tile's whole rows
          const bool inside = nt < tiles && row0 + g + 8 * (e / 2) < N;
          p[e] = inside ? exp_minus(s[nt][e], lse_log2e[e / 2]) : 0.f;
          s[nt][e] = inside ? logit_grad(p[e], dprob[nt][e], row_delta[e / 2]) : 0.f;
          bias_grad[nt][e] += s[nt][e];
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {  // keys 8nt + 2t, + 1 of both rows: one 4-byte store a pair
          const int i = row0 + g + 8 * r, j = nt * 8 + 2 * t4;
          store_pair(p_tile + i * ldp + j, p[2 * r], p[2 * r + 1]);
          store_pair(ds_tile + i * ldp + j, s[nt][2 * r], s[nt][2 * r + 1]);
        }
      }
    }
    MmaAccumulators acc;  // dq, then dv, then dk: each staged in a tile as soon as it is complete
    mma_zero(acc);
    __syncwarp();  // dq from the warp's rows of the dS tile (not from s: the bias gradient holds its registers)
    mma_tile_times_tile<false>(acc, ds_tile, ldp, k, ld, row0, Np / 16, dim_tiles);
    __syncthreads();  // the P and dS tiles are complete; k is read no more
    mma_stage_rows(acc, scale, k, ld, row0, dim_tiles);  // dq: this warp's queries

    // Columns: keys row0 … row0 + 15.
    mma_zero(acc);
    mma_tile_times_tile<true>(acc, p_tile, ldp, grad_o, ld, row0, Np / 16, dim_tiles);
    mma_stage_rows(acc, 1.f, v, ld, row0, dim_tiles);  // dv (v was read in the rows pass only)
    mma_zero(acc);
    mma_tile_times_tile<true>(acc, ds_tile, ldp, q, ld, row0, Np / 16, dim_tiles);
    __syncthreads();  // q is read no more
    mma_stage_rows(acc, scale, q, ld, row0, dim_tiles);  // dk
    __syncthreads();
    for_each_row_chunk(threadIdx.x, blockDim.x, N, d / vec, [&](int t, int chunk) {
      const int c = chunk * vec;
      scalar_t* token_grad = grad_qkv + pixel[t] * token + h * d + c;
      copy_elements(token_grad, k + t * ld + c, vec);
      copy_elements(token_grad + heads * d, q + t * ld + c, vec);
      copy_elements(token_grad + 2 * heads * d, v + t * ld + c, vec);
    });
    __syncthreads();
  }
  if (grad_bias_partial != nullptr) {  // the registers into the P and dS tiles (8-byte pairs), then to the partial
    float* grad_tile = reinterpret_cast<float*>(smem_raw + layout.probabilities);
    const int grad_ld = static_cast<int>(mma_bias_grad_ld(N));
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = row0 + g + 8 * r, j = nt * 8 + 2 * t4;
        if (nt < tiles && i < N) {  // keys past N (their 0) land in the row's padding (grad_ld > Np)
          alignas(8) const float pair[2] = {bias_grad[nt][2 * r], bias_grad[nt][2 * r + 1]};
          copy_chunk<8>(grad_tile + i * grad_ld + j, pair);
        }
      }
    }
    __syncthreads();
    float* partial = grad_bias_partial + (group * heads + h) * N * N;
    for_each_row_chunk(threadIdx.x, blockDim.x, N, N,
                       [&](int i, int j) { partial[i * N + j] = grad_tile[i * grad_ld + j]; });
  }
}

}  // namespace window_attention
}  // namespace attnkern
