// The window-attention forward on tensor cores (fp16, bf16; sm_80 and newer), for windows of N ≤ 64
// tokens and head dims d ≤ 64 — Swin's 7×7 and SwinIR's 8×8 windows. window_attention_cuda.cu launches it
// where it fits and the SIMT forward elsewhere; both compute window_attention.h's s, P and o.
//
// One block per (window, head) of Np / 16 warps (Np = N rounded up to 16). The block loads the window's
// q, k, v through the index maps into shared memory, zero-padded to Np rows and dp = d rounded up to 16
// columns (rows dp + 8 elements apart, so the 8 rows of an ldmatrix fall in different banks). Warp w owns
// query rows 16w … 16w + 15:
//   S = Q·Kᵀ      mma.m16n8k16 over dp / 16 steps into Np / 8 accumulator tiles (fp32, registers);
//   s = scale·S + logit_offset (window_attention.h: bias, region and explicit mask), −inf past key N;
//   the row's max and Σ exp over the 4 lanes of its group (shuffles); lse = max + log Σ;
//   O = P·V       the accumulators, rounded to the input type, are the A fragments (two tiles a k-step),
//                 V's B fragments come from ldmatrix.trans; o = O / Σ,
// and the warp stores its rows through its own rows of the q tile, one token's d channels at a time.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/cuda_utils.cuh"
#include "common/warp_mma.cuh"
#include "window_attention/window_attention.h"

namespace attnkern {
namespace window_attention {
constexpr int kMmaMaxTokens = 64;   // N ≤ 64: at most 8 key tiles of 8 in registers
constexpr int kMmaMaxHeadDim = 64;  // d ≤ 64: at most 8 output tiles of 8
constexpr int kMmaRowPad = 8;       // elements between a tile row's end and the next row

ATTNKERN_HD inline int64_t mma_round_up16(int64_t n) { return (n + 15) / 16 * 16; }

inline bool mma_fits(int64_t N, int64_t d) { return N <= kMmaMaxTokens && d <= kMmaMaxHeadDim; }

// Shared memory: q, k, v tiles [Np, dp + kMmaRowPad] and the head's bias [N, N] (16-bit elements; 16-byte
// aligned size), then the tokens' pixels and regions.
ATTNKERN_HD inline int64_t mma_tiles_bytes(int64_t N, int64_t d) {
  const int64_t Np = mma_round_up16(N), ld = mma_round_up16(d) + kMmaRowPad;
  return 3 * Np * ld * 2 + (N * N * 2 + 15) / 16 * 16;
}

inline int64_t mma_smem_bytes(int64_t N, int64_t d) {
  return mma_tiles_bytes(N, d) + mma_round_up16(N) * static_cast<int64_t>(sizeof(int64_t) + sizeof(int));
}

// Elements a thread copies at once: the most (8, 4, 2, 1) that divide d and keep every token's q, k, v and
// output row aligned (qkv's and out's addresses are multiples of the access).
inline int mma_vector_width(int64_t d, const void* qkv, const void* out) {
  for (int vec = 8; vec > 1; vec /= 2) {
    const uintptr_t bytes = 2 * vec;
    if (d % vec == 0 && reinterpret_cast<uintptr_t>(qkv) % bytes == 0 && reinterpret_cast<uintptr_t>(out) % bytes == 0)
      return vec;
  }
  return 1;
}

// The widest copy of `vec` 16-bit elements in one access: 16, 8 or 4 bytes, or element by element. The
// host picks vec (mma_vector_width) so that both pointers are aligned to it.
template <int bytes>
struct alignas(bytes) Chunk {
  uint16_t element[bytes / 2];
};

template <int bytes, typename scalar_t>
__device__ __forceinline__ void copy_chunk(scalar_t* dst, const scalar_t* src) {
#if defined(ATTNKERN_CUDA_EMULATION)
  std::memcpy(dst, src, bytes);  // the host compiler: no type punning
#else
  *reinterpret_cast<Chunk<bytes>*>(dst) = *reinterpret_cast<const Chunk<bytes>*>(src);
#endif
}

template <typename scalar_t>
__device__ __forceinline__ void copy_elements(scalar_t* dst, const scalar_t* src, int vec) {
  if (vec == 8) copy_chunk<16>(dst, src);
  else if (vec == 4) copy_chunk<8>(dst, src);
  else if (vec == 2) copy_chunk<4>(dst, src);
  else *dst = *src;
}

template <typename scalar_t>
__global__ void mma_forward_kernel(const scalar_t* __restrict__ qkv, const scalar_t* __restrict__ bias,
                                   const float* __restrict__ mask, scalar_t* __restrict__ out,
                                   float* __restrict__ lse, WindowGrid grid, int heads, int d, int vec, float scale) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int N = static_cast<int>(grid.tokens()), Np = static_cast<int>(mma_round_up16(N));
  const int dp = static_cast<int>(mma_round_up16(d)), ld = dp + kMmaRowPad;
  const int64_t nW = grid.windows(), HW = grid.H * grid.W;
  const int64_t h = blockIdx.x % heads, w = (blockIdx.x / heads) % nW, b = blockIdx.x / (heads * nW);
  scalar_t* q = reinterpret_cast<scalar_t*>(smem_raw);
  scalar_t* k = q + Np * ld;
  scalar_t* v = k + Np * ld;
  scalar_t* bias_tile = v + Np * ld;
  int64_t* pixel = reinterpret_cast<int64_t*>(smem_raw + mma_tiles_bytes(N, d));
  int* region = reinterpret_cast<int*>(pixel + Np);

  for (int t = threadIdx.x; t < Np; t += blockDim.x) {
    pixel[t] = t < N ? b * HW + grid.pixel(w, t) : 0;
    region[t] = t < N && grid.shift > 0 ? grid.region(w, t) : 0;
  }
  if (bias != nullptr) {  // this head's [N, N] bias, read row by row below
    for (int e = threadIdx.x; e < N * N; e += blockDim.x) bias_tile[e] = bias[h * N * N + e];
  }
  __syncthreads();
  // q, k, v of the window, `vec` consecutive channels a thread (vec divides d; 16 bytes when d % 8 == 0),
  // zero past token N and channel d.
  const int chunks = dp / vec;
  for (int e = threadIdx.x; e < Np * chunks; e += blockDim.x) {
    const int t = e / chunks, c = (e % chunks) * vec;
    if (t < N && c < d) {
      const scalar_t* token = qkv + pixel[t] * 3 * heads * d + h * d + c;
      copy_elements(q + t * ld + c, token, vec);
      copy_elements(k + t * ld + c, token + heads * d, vec);
      copy_elements(v + t * ld + c, token + 2 * heads * d, vec);
    } else {
      for (int x = 0; x < vec; ++x) q[t * ld + c + x] = k[t * ld + c + x] = v[t * ld + c + x] = scalar_t(0);
    }
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int row0 = 16 * warp, key_tiles = Np / 8, dim_tiles = dp / 8;
  // ldmatrix row addresses: lane l gives row l % 8 of matrix l / 8.
  const int a_row = row0 + lane % 8 + 8 * ((lane / 8) % 2), a_col = 8 * (lane / 16);  // A 16×16: 4 matrices
  const int b_row = lane % 8, b_half = 8 * ((lane / 8) % 2);                          // B 16×8: 2 matrices

  float s[kMmaMaxTokens / 8][4];
#pragma unroll
  for (int nt = 0; nt < kMmaMaxTokens / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
  for (int kk = 0; kk < dp; kk += 16) {
    uint32_t a[4];
    tensor_core::ldmatrix<4>(a, q + a_row * ld + kk + a_col);
#pragma unroll
    for (int nt = 0; nt < kMmaMaxTokens / 8; ++nt) {
      if (nt < key_tiles) {  // uniform over the block
        uint32_t bk[2];
        tensor_core::ldmatrix<2>(bk, k + (nt * 8 + b_row) * ld + kk + b_half);
        tensor_core::mma_m16n8k16<scalar_t>(s[nt], a, bk);
      }
    }
  }

  // Logits and the softmax of rows i = row0 + g (elements 0, 1) and row0 + g + 8 (2, 3).
  const scalar_t* bias_h = bias != nullptr ? bias_tile : nullptr;
  const float* mask_w = mask != nullptr ? mask + w * N * N : nullptr;
  const int* regions = grid.shift > 0 ? region : nullptr;
  float row_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int nt = 0; nt < kMmaMaxTokens / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = row0 + g + 8 * (e / 2), j = nt * 8 + 2 * t4 + e % 2;
      float logit = -INFINITY;
      if (nt < key_tiles && j < N) {
        logit = scale * s[nt][e];
        if (i < N) logit += logit_offset<float>(bias_h, mask_w, regions, i, j, N);
      }
      s[nt][e] = logit;
      row_max[e / 2] = max(row_max[e / 2], logit);
    }
  }
  float row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_max[r] = tensor_core::group_max(row_max[r]);
    if (row_max[r] == -INFINITY) row_max[r] = 0.f;  // a row of −inf logits: P = 0, o = 0/0 = NaN as in torch
  }
#pragma unroll
  for (int nt = 0; nt < kMmaMaxTokens / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = exp(s[nt][e] - row_max[e / 2]);
      row_sum[e / 2] += s[nt][e];
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] = tensor_core::group_sum(row_sum[r]);
    const int i = row0 + g + 8 * r;
    if (t4 == 0 && i < N) lse[pixel[i] * heads + h] = row_max[r] + log(row_sum[r]);
  }

  float o[kMmaMaxHeadDim / 8][4];
#pragma unroll
  for (int dt = 0; dt < kMmaMaxHeadDim / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
#pragma unroll
  for (int kt = 0; kt < kMmaMaxTokens / 16; ++kt) {
    if (2 * kt < key_tiles) {
      const uint32_t p[4] = {tensor_core::pack<scalar_t>(s[2 * kt][0], s[2 * kt][1]),
                             tensor_core::pack<scalar_t>(s[2 * kt][2], s[2 * kt][3]),
                             tensor_core::pack<scalar_t>(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                             tensor_core::pack<scalar_t>(s[2 * kt + 1][2], s[2 * kt + 1][3])};
#pragma unroll
      for (int dt = 0; dt < kMmaMaxHeadDim / 8; ++dt) {
        if (dt < dim_tiles) {
          uint32_t bv[2];
          tensor_core::ldmatrix<2, true>(bv, v + (16 * kt + b_row + b_half) * ld + 8 * dt);
          tensor_core::mma_m16n8k16<scalar_t>(o[dt], p, bv);
        }
      }
    }
  }

  // o = O / Σ into this warp's rows of the q tile (no other warp reads them), then to the image.
  __syncwarp();
#pragma unroll
  for (int dt = 0; dt < kMmaMaxHeadDim / 8; ++dt) {
    if (dt < dim_tiles) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        q[(row0 + g + 8 * (e / 2)) * ld + 8 * dt + 2 * t4 + e % 2] = static_cast<scalar_t>(o[dt][e] / row_sum[e / 2]);
      }
    }
  }
  __syncwarp();
  const int out_chunks = d / vec;
  for (int e = lane; e < 16 * out_chunks; e += 32) {
    const int i = row0 + e / out_chunks, c = (e % out_chunks) * vec;
    if (i < N) copy_elements(out + out_offset(pixel[i], h, heads, d) + c, q + i * ld + c, vec);
  }
}

}  // namespace window_attention
}  // namespace attnkern
