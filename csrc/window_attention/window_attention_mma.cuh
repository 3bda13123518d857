// The window-attention forward on tensor cores (fp16, bf16; sm_80 and newer), for windows of N ≤ 64
// tokens and head dims d ≤ 64 — Swin's 7×7 and SwinIR's 8×8 windows. window_attention_cuda.cu launches it
// where it fits and the SIMT forward elsewhere; both compute window_attention.h's s, P and o.
//
// One block per (window, head) of Np / 16 warps (Np = N rounded up to 16). The block loads the window's
// q, k, v through the index maps into shared memory (mma_load_tiles), zero-padded to Np rows and dp = d
// rounded up to 16 columns (rows dp + 8 elements apart, so the 8 rows of an ldmatrix fall in different
// banks), and the head's bias 16 bytes a copy. Warp w owns query rows 16w … 16w + 15:
//   S = Q·Kᵀ      mma.m16n8k16 over dp / 16 steps into Np / 8 accumulator tiles (fp32, registers);
//   s = scale·S + logit_offset (window_attention.h: bias, region and explicit mask), −inf past key N;
//   the row's max and Σ exp over the 4 lanes of its group (shuffles; exp_minus: ex2 of log2 e-scaled
//   logits); lse = max + log Σ;
//   O = P·V       the accumulators, rounded to the input type, are the A fragments (two tiles a k-step),
//                 V's B fragments come from ldmatrix.trans; o = O·(1 / Σ),
// and the warp stages its output rows in its own rows of the q tile, copied out vec channels at a time.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/cuda_vector.cuh"
#include "common/warp_mma.cuh"
#include "window_attention/window_attention.h"

namespace attnkern {
namespace window_attention {
constexpr int kMmaMaxTokens = 64;   // N ≤ 64: at most 8 key tiles of 8 in registers
constexpr int kMmaMaxHeadDim = 64;  // d ≤ 64: at most 8 output tiles of 8
constexpr int kMmaRowPad = 8;       // elements between a tile row's end and the next row

ATTNKERN_HD inline int64_t mma_round_up16(int64_t n) { return (n + 15) / 16 * 16; }

inline bool mma_fits(int64_t N, int64_t d) { return N <= kMmaMaxTokens && d <= kMmaMaxHeadDim; }

// Row strides (elements) of the head's bias tile [N, N] (16-bit) and of the backward's bias gradient and mask
// [N, N] (float) in shared memory, chosen for the accumulator-fragment order in which warps read them (8 rows g,
// the columns 2t, 2t + 1 of each 8-column tile): rows that are whole 16-byte chunks (N % 8 == 0) go 4 banks apart,
// so a fragment's 8 rows fill the 32 banks once (N = 64 unpadded: all 8 rows in the same 4 banks, 8-way
// conflicts); other N keep rows of N (copied as one run: 2-way). The gradient's rows go 8 banks apart: its
// float pairs span 64 words, 2-way at best, where 49 or 64 floats a row gave 4- or 8-way.
ATTNKERN_HD inline int64_t mma_bias_ld(int64_t N) { return N % 8 == 0 ? (N + 63) / 64 * 64 + 8 : N; }
ATTNKERN_HD inline int64_t mma_bias_grad_ld(int64_t N) { return (N + 31) / 32 * 32 + 8; }

// The region of the head's bias tile [N, mma_bias_ld(N)]: 16 bytes more than the tile, so that it can start as
// far past a 16-byte boundary as the head's bias in global memory (mma_load_bias); a multiple of 16 bytes.
ATTNKERN_HD inline int64_t mma_bias_bytes(int64_t N) { return (N * mma_bias_ld(N) * 2 + 15) / 16 * 16 + 16; }

// Shared memory: q, k, v tiles [Np, dp + kMmaRowPad] and the bias region, then the tokens' pixels and regions.
ATTNKERN_HD inline int64_t mma_tiles_bytes(int64_t N, int64_t d) {
  const int64_t Np = mma_round_up16(N), ld = mma_round_up16(d) + kMmaRowPad;
  return 3 * Np * ld * 2 + mma_bias_bytes(N);
}

inline int64_t mma_smem_bytes(int64_t N, int64_t d) {
  return mma_tiles_bytes(N, d) + mma_round_up16(N) * static_cast<int64_t>(sizeof(int64_t) + sizeof(int));
}

// dst[0], dst[1] = a, b rounded to scalar_t, in one 4-byte store (dst 4-byte aligned).
template <typename scalar_t>
__device__ __forceinline__ void store_pair(scalar_t* dst, float a, float b) {
  alignas(4) const scalar_t pair[2] = {static_cast<scalar_t>(a), static_cast<scalar_t>(b)};
  copy_chunk<4>(dst, pair);
}

// Accumulator tiles of one warp: up to 8 tiles of 16×8 (key tiles of S, or dimension tiles of an output).
using MmaAccumulators = float[8][4];
static_assert(kMmaMaxTokens == 8 * 8 && kMmaMaxHeadDim == 8 * 8, "8 accumulator tiles of 8 columns");

// The head's bias bias_h [N, N] into the bias region (16-byte aligned) of shared memory as a tile of rows
// mma_bias_ld(N) apart, 16 bytes a copy (block_copy_rows; rows of N run on as one): the tile starts as far into
// the region as bias_h lies past a 16-byte boundary. Returns it.
template <typename scalar_t>
__device__ scalar_t* mma_load_bias(unsigned char* region, const scalar_t* bias_h, int N) {
  scalar_t* tile = reinterpret_cast<scalar_t*>(region) + offset_in_16_bytes(bias_h);
  const int ld = static_cast<int>(mma_bias_ld(N));
  if (ld == N) block_copy(tile, bias_h, N * N);
  else block_copy_rows(tile, ld, bias_h, N, N, N);
  return tile;
}

// The window's tokens: pixel (with the sample's offset; 0 past N) and shifted-window region.
__device__ __forceinline__ void mma_load_tokens(const WindowGrid& grid, int64_t b, int64_t w, int N, int Np,
                                                int64_t* pixel, int* region) {
  const int64_t HW = grid.H * grid.W;
  for (int t = threadIdx.x; t < Np; t += blockDim.x) {
    pixel[t] = t < N ? b * HW + grid.pixel(w, t) : 0;
    region[t] = t < N && grid.shift > 0 ? grid.region(w, t) : 0;
  }
}

// f(row, chunk) for the elements e = row·chunks + chunk of a [rows, chunks] grid that a thread takes, e = first,
// first + stride, … : one division at the start, then the pair is stepped (no division a step).
template <typename F>
__device__ __forceinline__ void for_each_row_chunk(int first, int stride, int rows, int chunks, F&& f) {
  const int row_step = stride / chunks, chunk_step = stride % chunks;
  int row = first / chunks, chunk = first % chunks;
  while (row < rows) {
    f(row, chunk);
    row += row_step;
    chunk += chunk_step;
    if (chunk >= chunks) {
      chunk -= chunks;
      ++row;
    }
  }
}

// tiles[x][t][c] = sources[x][pixel[t]·strides[x] + c] for t < N, c < d, zero elsewhere in [Np, dp], for the
// kTiles tiles of a window (q, k, v; the backward's dO): `vec` consecutive channels a thread (vec divides d;
// 16 bytes when d % 8 == 0), the same chunk of every tile loaded into registers before any is stored, so
// that a warp has kTiles requests in flight where a load and its store one after the other gave it one.
template <int kTiles, typename scalar_t>
__device__ void mma_load_tiles(scalar_t* const (&tiles)[kTiles], const scalar_t* const (&sources)[kTiles],
                               const int64_t (&strides)[kTiles], const int64_t* pixel, int N, int Np, int d, int dp,
                               int ld, int vec) {
  for_each_row_chunk(threadIdx.x, blockDim.x, Np, dp / vec, [&](int t, int chunk) {
    const int c = chunk * vec;
    alignas(16) scalar_t values[kTiles][8];
#pragma unroll
    for (int x = 0; x < kTiles; ++x) {  // constant indices: the chunks stay in registers
      if (t < N && c < d) {
        copy_elements(values[x], sources[x] + pixel[t] * strides[x] + c, vec);
      } else {
#pragma unroll
        for (int y = 0; y < 8; ++y) values[x][y] = scalar_t(0);
      }
    }
#pragma unroll
    for (int x = 0; x < kTiles; ++x) copy_elements(tiles[x] + t * ld + c, values[x], vec);
  });
}

__device__ __forceinline__ void mma_zero(MmaAccumulators& acc) {
#pragma unroll
  for (int n = 0; n < 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
}

// acc[nt] += A·Bᵀ for the warp's rows row0 … row0 + 15 of `a` and rows 8nt … 8nt + 7 of `b` (first_tile ≤ nt <
// end_tile), over dp columns: S = Q·Kᵀ, dP = dO·Vᵀ. ldmatrix: lane l gives row l % 8 of matrix l / 8.
template <typename scalar_t>
__device__ __forceinline__ void mma_rows_times_rows(MmaAccumulators& acc, const scalar_t* a, const scalar_t* b, int ld,
                                                    int dp, int first_tile, int end_tile, int row0) {
  const int lane = threadIdx.x % 32;
  const int a_row = row0 + lane % 8 + 8 * ((lane / 8) % 2), a_col = 8 * (lane / 16);  // A 16×16: 4 matrices
  const int b_row = lane % 8, b_col = 8 * ((lane / 8) % 2);                          // B 16×8: 2 matrices
  for (int kk = 0; kk < dp; kk += 16) {
    uint32_t fa[4];
    tensor_core::ldmatrix<4>(fa, a + a_row * ld + kk + a_col);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      if (nt >= first_tile && nt < end_tile) {  // uniform over the block
        uint32_t fb[2];
        tensor_core::ldmatrix<2>(fb, b + (nt * 8 + b_row) * ld + kk + b_col);
        tensor_core::mma_m16n8k16<scalar_t>(acc[nt], fa, fb);
      }
    }
  }
}

// acc[dt] += X·T for X the warp's 16 × 16·k_steps values in registers (the accumulators `x`, two tiles a
// k-step, rounded to scalar_t: the A fragments) and T = tile rows 0 … 16·k_steps − 1, columns 8dt … 8dt + 7
// (dt < dim_tiles): O = P·V.
template <typename scalar_t>
__device__ __forceinline__ void mma_registers_times_tile(MmaAccumulators& acc, const MmaAccumulators& x,
                                                         const scalar_t* tile, int ld, int k_steps, int dim_tiles) {
  const int lane = threadIdx.x % 32;
  const int b_row = lane % 8 + 8 * ((lane / 8) % 2);
#pragma unroll
  for (int kt = 0; kt < 4; ++kt) {
    if (kt < k_steps) {
      const uint32_t fa[4] = {tensor_core::pack<scalar_t>(x[2 * kt][0], x[2 * kt][1]),
                              tensor_core::pack<scalar_t>(x[2 * kt][2], x[2 * kt][3]),
                              tensor_core::pack<scalar_t>(x[2 * kt + 1][0], x[2 * kt + 1][1]),
                              tensor_core::pack<scalar_t>(x[2 * kt + 1][2], x[2 * kt + 1][3])};
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
}

// The logits of the warp's rows from S (in place) in key tiles first_tile ≤ nt < end_tile, −inf in the tiles
// after (those before are left as they are): s_ij = scale·S_ij + logit_offset (window_attention.h), −inf past
// key N; bias_h is a tile of rows bias_ld apart (mma_load_bias, mma_backward_load_bias), mask_w one of rows
// mask_ld apart. Element e of tile nt is row row0 + g + 8·(e / 2), key 8nt + 2t + e % 2. Padding rows (i ≥ N,
// whose outputs are never stored) take row N − 1's offsets, so only the key is bounds-tested (read at the key
// clamped below N and selected instead, the backward spilled); kKeysPadded: not even the key — the bias tile is
// never null, holds −inf from key N to Np and has rows an even number of values apart (mma_backward_load_bias:
// a row's key pair is one 4-byte load), and the mask holds Np keys. In shifted windows the region ids of the
// lane's two rows are read once and those of its key pair once a tile (one 8-byte load: regions holds Np ids),
// not two loads an element.
// kSettled: which offsets there are is settled once — the bias alone (unshifted windows, no mask: one
// shared-memory load, a conversion and an FFMA an element), the bias and the region penalty (shifted windows, no
// mask: a compare and a select more), none, or the general sum; else every element takes the general sum (the
// backward: its unrolled copies cost registers past its launch bound, and spills).
template <bool kSettled, bool kKeysPadded, typename scalar_t>
__device__ __forceinline__ void mma_logits(MmaAccumulators& s, int row0, int N, int first_tile, int end_tile,
                                           float scale, const scalar_t* bias_h, int bias_ld, const float* mask_w,
                                           int mask_ld, const int* regions) {
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int rows[2] = {min(row0 + g, N - 1), min(row0 + g + 8, N - 1)};
  const bool shifted = regions != nullptr;
  const int row_region[2] = {shifted ? regions[rows[0]] : 0, shifted ? regions[rows[1]] : 0};
  auto bias_at = [&](int i, int j) { return static_cast<float>(bias_h[i * bias_ld + j]); };  // bias_h not null
  auto bias = [&](int i, int j) { return bias_h != nullptr ? bias_at(i, j) : 0.f; };
  // logit(scaled S, i, j, region of i, region of j, bias of (i, j) where kKeysPadded)
  auto logits = [&](auto logit) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      if (nt < first_tile) continue;
      alignas(8) int key_region[2] = {0, 0};
      if (shifted && nt < end_tile) copy_chunk<8>(key_region, regions + nt * 8 + 2 * t4);
      // kKeysPadded: the tile's rows are an even number of values apart, a row's key pair one 4-byte load
      alignas(4) scalar_t key_bias[2][2] = {};
      if (kKeysPadded && nt < end_tile) {
#pragma unroll
        for (int r = 0; r < 2; ++r) copy_chunk<4>(key_bias[r], bias_h + rows[r] * bias_ld + nt * 8 + 2 * t4);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = nt * 8 + 2 * t4 + e % 2;
        s[nt][e] = nt < end_tile && (kKeysPadded || j < N)
                       ? logit(scale * s[nt][e], rows[e / 2], j, row_region[e / 2], key_region[e % 2],
                               static_cast<float>(key_bias[e / 2][e % 2]))
                       : -INFINITY;
      }
    }
  };
  auto general = [&](float x, int i, int j, int region_i, int region_j, float key_bias) {
    return x + ((kKeysPadded ? key_bias : bias(i, j)) +
                logit_offset<float>(static_cast<const scalar_t*>(nullptr), mask_w, shifted, region_i, region_j, i, j,
                                    mask_ld));
  };
  if (!kSettled || mask_w != nullptr || (shifted && bias_h == nullptr)) {
    logits(general);
  } else if (shifted) {
    logits([&](float x, int i, int j, int region_i, int region_j, float) {
      return x + (bias_at(i, j) + region_penalty<float>(region_i, region_j));
    });
  } else if (bias_h != nullptr) {
    logits([&](float x, int i, int j, int, int, float) { return x + bias_at(i, j); });
  } else {
    logits([](float x, int, int, int, int, float) { return x; });
  }
}

// The warp's output rows (acc: rows row0 + g, + 8; columns 8dt + 2t, + 1) times `scale`, rounded, into a
// [Np, ld] tile, a column pair a store.
template <typename scalar_t>
__device__ __forceinline__ void mma_stage_rows(const MmaAccumulators& acc, float scale, scalar_t* tile, int ld,
                                               int row0, int dim_tiles) {
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int dt = 0; dt < 8; ++dt) {
    if (dt < dim_tiles) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        store_pair(tile + (row0 + g + 8 * r) * ld + 8 * dt + 2 * t4, scale * acc[dt][2 * r],
                   scale * acc[dt][2 * r + 1]);
      }
    }
  }
}

template <typename scalar_t>
__global__ void mma_forward_kernel(const scalar_t* __restrict__ qkv, const scalar_t* __restrict__ bias,
                                   const float* __restrict__ mask, scalar_t* __restrict__ out,
                                   float* __restrict__ lse, WindowGrid grid, int heads, int d, int vec, float scale) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int N = static_cast<int>(grid.tokens()), Np = static_cast<int>(mma_round_up16(N));
  const int dp = static_cast<int>(mma_round_up16(d)), ld = dp + kMmaRowPad;
  const int64_t nW = grid.windows();
  const int64_t h = blockIdx.x % heads, w = (blockIdx.x / heads) % nW, b = blockIdx.x / (heads * nW);
  scalar_t* q = reinterpret_cast<scalar_t*>(smem_raw);
  scalar_t* k = q + Np * ld;
  scalar_t* v = k + Np * ld;
  int64_t* pixel = reinterpret_cast<int64_t*>(smem_raw + mma_tiles_bytes(N, d));
  int* region = reinterpret_cast<int*>(pixel + Np);

  mma_load_tokens(grid, b, w, N, Np, pixel, region);
  const scalar_t* bias_tile =  // this head's [N, N] bias, read row by row below
      bias != nullptr ? mma_load_bias(reinterpret_cast<unsigned char*>(v + Np * ld), bias + h * N * N, N) : nullptr;
  __syncthreads();
  const int64_t token = 3 * heads * d;
  mma_load_tiles<3>({q, k, v}, {qkv + h * d, qkv + (heads + h) * d, qkv + (2 * heads + h) * d},
                    {token, token, token}, pixel, N, Np, d, dp, ld, vec);
  __syncthreads();

  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4, row0 = 16 * (threadIdx.x / 32);
  const int key_tiles = (N + 7) / 8, dim_tiles = dp / 8;  // 7 of Np / 8 = 8 at N = 49
  MmaAccumulators s;
  mma_zero(s);
  mma_rows_times_rows(s, q, k, ld, dp, 0, key_tiles, row0);  // past the tiles that hold a key, −inf logits
  mma_logits</*kSettled=*/true, /*kKeysPadded=*/false>(s, row0, N, 0, key_tiles, scale, bias_tile,
                                                       static_cast<int>(mma_bias_ld(N)),
                                                       mask != nullptr ? mask + w * N * N : nullptr, N,
                                                       grid.shift > 0 ? region : nullptr);

  // The softmax of rows row0 + g (elements 0, 1) and row0 + g + 8 (2, 3), over the 4 lanes of a group.
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) row_max[e / 2] = max(row_max[e / 2], s[nt][e]);
  }
  float max_log2e[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_max[r] = tensor_core::group_max(row_max[r]);
    if (row_max[r] == -INFINITY) row_max[r] = 0.f;  // a row of −inf logits: P = 0, o = 0/0 = NaN as in torch
    max_log2e[r] = row_max[r] * kLog2e;
  }
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = exp_minus(s[nt][e], max_log2e[e / 2]);
      row_sum[e / 2] += s[nt][e];
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] = tensor_core::group_sum(row_sum[r]);
    const int i = row0 + g + 8 * r;
    if (t4 == 0 && i < N) lse[pixel[i] * heads + h] = row_max[r] + log(row_sum[r]);
  }

  MmaAccumulators o;
  mma_zero(o);
  mma_registers_times_tile(o, s, v, ld, Np / 16, dim_tiles);

  // o = O / Σ into this warp's rows of the q tile (no other warp reads them), then to the image.
  const float inverse_sum[2] = {1.f / row_sum[0], 1.f / row_sum[1]};
#pragma unroll
  for (int dt = 0; dt < 8; ++dt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dt][e] *= inverse_sum[e / 2];
  }
  __syncwarp();
  mma_stage_rows(o, 1.f, q, ld, row0, dim_tiles);
  __syncwarp();
  for_each_row_chunk(lane, 32, 16, d / vec, [&](int row, int chunk) {
    const int i = row0 + row, c = chunk * vec;
    if (i < N) copy_elements(out + out_offset(pixel[i], h, heads, d) + c, q + i * ld + c, vec);
  });
}

}  // namespace window_attention
}  // namespace attnkern
