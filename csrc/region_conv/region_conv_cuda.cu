// CUDA kernels of the region_conv family.
//
// region_assign, forward and backward: one block per 32 pixels of a sample (the forward's also per 32
// channels), its warps channel slices (lanes on consecutive pixels); each pixel's argmax once a block.
//
// dynamic_region_conv: the pixels of each sample grouped by selected region once (bucket_pixels_kernel,
// stable, so that every reduction over a region's pixels runs in a fixed order), then each part a tiled
// product on CUDA cores (region_product: 64 × 64 tiles, 4 × 4 outputs a thread) whose operands are
// gathered through the region's pixel list and region_conv.h's tap walk (X[k, p]: x at tap k of output
// pixel p, 0 in the padding — the im2col matrix, never stored):
//   forward        out[o, p]  = Σ_k W_r[o, k]·X[k, p]              p in region r's pixels
//   ∂x, columns    dX[k, p]   = Σ_o W_r[o, k]·grad[o, p]           p in region r's pixels, then col2im
//   ∂filters       dW_r[o, k] = Σ_p grad[o, p]·X[k, p]             over region r's pixels
//   ∂guide         G_r[p]     = Σ_o grad[o, p]·Σ_k W_r[o, k]·X[k, p]  every region at every pixel, summed over
//                  a 64-channel slice per block: partials summed in order by guide_gradient_kernel.
// Nothing is accumulated with atomics: every result is written once, every sum in a fixed order. Index
// math within a sample is 32-bit (geometry32 checks that the sizes fit).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "region_conv/region_conv.h"
#include "region_conv/region_conv_checks.h"

namespace attnkern {
namespace region_conv {
namespace {

constexpr int kAssignPixels = 32, kAssignSlices = 8;
constexpr int kAssignChannels = 32;  // the forward's channels a block (blockIdx.y: which 32)

// The forward: the block's pixels' regions (argmax over the guide), then channels 32·blockIdx.y … + 31 of
// the selected region's outputs copied, warp y taking channels y, y + 8, …
template <typename scalar_t>
__global__ void region_assign_kernel(const scalar_t* __restrict__ outputs, const scalar_t* __restrict__ guide,
                                     scalar_t* __restrict__ out, int64_t R, int64_t C, int64_t HW, int64_t tiles) {
  __shared__ int64_t selected[kAssignPixels];
  const int64_t b = blockIdx.x / tiles, p = (blockIdx.x % tiles) * kAssignPixels + threadIdx.x;
  const bool pixel = p < HW;
  if (threadIdx.y == 0 && pixel) selected[threadIdx.x] = selected_region(guide + b * R * HW + p, R, HW);
  __syncthreads();
  if (!pixel) return;
  const scalar_t* src = outputs + (b * R + selected[threadIdx.x]) * C * HW + p;
  scalar_t* dst = out + b * C * HW + p;
  const int64_t last = std::min<int64_t>(C, (blockIdx.y + 1) * int64_t(kAssignChannels));
  for (int64_t c = blockIdx.y * int64_t(kAssignChannels) + threadIdx.y; c < last; c += kAssignSlices) {
    dst[c * HW] = src[c * HW];
  }
}

// The backward, on the same blocks: one pass over outputs writes their straight-through gradient and each
// region's share of G_r; the shares are summed in a fixed order (deterministic) into `responses` [B, r, HW],
// each G_r computed once; then the guide's gradient of the block's pixels.
template <typename scalar_t, typename acc_t>
__global__ void region_assign_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ outputs,
                                              const scalar_t* __restrict__ guide, scalar_t* __restrict__ grad_outputs,
                                              scalar_t* __restrict__ grad_guide, acc_t* __restrict__ responses,
                                              int64_t R, int64_t C, int64_t HW, int64_t tiles) {
  __shared__ acc_t shares[kAssignSlices][kAssignPixels];
  __shared__ int64_t selected[kAssignPixels];
  const int64_t b = blockIdx.x / tiles, p = (blockIdx.x % tiles) * kAssignPixels + threadIdx.x;
  const int64_t slice = threadIdx.y;
  const bool pixel = p < HW;
  const scalar_t* guide_p = guide + b * R * HW + p;
  if (slice == 0 && pixel) selected[threadIdx.x] = selected_region(guide_p, R, HW);
  __syncthreads();
  acc_t* responses_p = responses + b * R * HW + p;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t at = (b * R + r) * C * HW + p;
    shares[slice][threadIdx.x] =
        pixel ? straight_through_channels<acc_t>(grad + b * C * HW + p, outputs + at, grad_outputs + at,
                                                 selected[threadIdx.x] == r, slice, C, int64_t(kAssignSlices), HW)
              : acc_t(0);
    __syncthreads();
    if (slice == 0 && pixel) {
      acc_t response = 0;
      for (int s = 0; s < kAssignSlices; ++s) response += shares[s][threadIdx.x];
      responses_p[r * HW] = response;
    }
    __syncthreads();
  }
  if (slice == 0 && pixel) {  // the thread reads back the responses it wrote
    guide_gradient<acc_t>(guide_p, grad_guide + b * R * HW + p, R, HW, [&](int64_t r) { return responses_p[r * HW]; });
  }
}

// The blocks' pixel tiles a sample, ⌈H·W/32⌉; B of them must fit the grid.
int64_t assign_tiles(int64_t B, int64_t HW, const char* op) {
  const int64_t tiles = ceil_div(HW, kAssignPixels);
  TORCH_CHECK(B * tiles <= std::numeric_limits<int32_t>::max(), op, ": B·⌈H·W/32⌉ = ", B * tiles,
              " blocks exceed the CUDA grid (2^31 - 1)");
  return tiles;
}

at::Tensor region_assign_cuda(const at::Tensor& outputs_in, const at::Tensor& guide_in) {
  check_region_assign_inputs(outputs_in, guide_in, "region_assign");
  c10::cuda::CUDAGuard device_guard(outputs_in.device());
  auto outputs = outputs_in.contiguous(), guide = guide_in.contiguous();
  const int64_t B = outputs.size(0), R = outputs.size(1), C = outputs.size(2), HW = outputs.size(3) * outputs.size(4);
  auto out = at::empty({B, C, outputs.size(3), outputs.size(4)}, outputs.options());
  if (out.numel() == 0) return out;
  const int64_t tiles = assign_tiles(B, HW, "region_assign"), channel_blocks = ceil_div(C, kAssignChannels);
  TORCH_CHECK(channel_blocks <= 65535, "region_assign: ⌈C/32⌉ = ", channel_blocks,
              " channel blocks exceed the CUDA grid's y (65535)");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, outputs.scalar_type(), "region_assign_cuda", [&] {
    ATTNKERN_LAUNCH(dim3(static_cast<unsigned>(B * tiles), static_cast<unsigned>(channel_blocks)),
                    dim3(kAssignPixels, kAssignSlices), 0,
                    c10::cuda::getCurrentCUDAStream(), region_assign_kernel<scalar_t>)(
        outputs.const_data_ptr<scalar_t>(), guide.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), R, C,
        HW, tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> region_assign_backward_cuda(const at::Tensor& grad_in, const at::Tensor& outputs_in,
                                                               const at::Tensor& guide_in) {
  check_region_assign_inputs(outputs_in, guide_in, "region_assign_backward");
  check_region_assign_grad(grad_in, outputs_in);
  c10::cuda::CUDAGuard device_guard(outputs_in.device());
  auto outputs = outputs_in.contiguous(), guide = guide_in.contiguous(), grad = grad_in.contiguous();
  const int64_t B = outputs.size(0), R = outputs.size(1), C = outputs.size(2), HW = outputs.size(3) * outputs.size(4);
  auto grad_outputs = at::empty_like(outputs), grad_guide = at::empty_like(guide);
  if (guide.numel() == 0) return {grad_outputs, grad_guide};  // B·HW = 0: outputs are empty too
  const int64_t tiles = assign_tiles(B, HW, "region_assign_backward");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, outputs.scalar_type(), "region_assign_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto responses = at::empty({B, R, HW}, outputs.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    ATTNKERN_LAUNCH(dim3(static_cast<unsigned>(B * tiles)), dim3(kAssignPixels, kAssignSlices), 0,
                    c10::cuda::getCurrentCUDAStream(), region_assign_backward_kernel<scalar_t, acc_t>)(
        grad.const_data_ptr<scalar_t>(), outputs.const_data_ptr<scalar_t>(), guide.const_data_ptr<scalar_t>(),
        grad_outputs.mutable_data_ptr<scalar_t>(), grad_guide.mutable_data_ptr<scalar_t>(),
        responses.mutable_data_ptr<acc_t>(), R, C, HW, tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_outputs, grad_guide};
}

// ---- dynamic region convolution ------------------------------------------------------------------

constexpr int kTile = 64;     // a block's output tile: kTile × kTile
constexpr int kStep = 16;     // reduction steps staged in shared memory at a time
constexpr int kThreads = 256;  // 16 × 16 threads, 4 × 4 outputs each
constexpr int kPerThread = kTile * kStep / kThreads;  // elements of each operand a thread stages per step

// Checks that one sample's index math fits in 32 bits and the grid's y its tiles, and narrows g.
ConvGeometry32 geometry32(const ConvGeometry& g, int64_t R, const char* op) {
  const int64_t K = g.filter_size(), L = g.out_height * g.out_width, slices = ceil_div(g.out_channels, kTile);
  const struct {
    const char* what;
    int64_t value;
  } sizes[] = {{"Cin·H·W", g.in_channels * g.height * g.width}, {"Cout·H'·W'", g.out_channels * L},
               {"Cin·kh·kw·H'·W'", K * L}, {"r·Cout·Cin·kh·kw", R * g.out_channels * K},
               {"r·⌈Cout/64⌉·H'·W'", R * slices * L}, {"H'·W' + r·64", L + R * kTile},
               {"(H + 2·padding)·(W + 2·padding)", (g.height + 2 * g.pad_h + 1) * (g.width + 2 * g.pad_w + 1)}};
  for (const auto& [what, value] : sizes) {
    TORCH_CHECK(value <= std::numeric_limits<int32_t>::max() - kTile, op, ": the CUDA kernels index one sample in ",
                "32 bits; ", what, " = ", value, " does not fit (split the batch's images)");
  }
  TORCH_CHECK(std::max(ceil_div(K, kTile), R * slices) <= 65535, op, ": ⌈Cin·kh·kw/64⌉ = ", ceil_div(K, kTile),
              " and r·⌈Cout/64⌉ = ", R * slices, " must be at most 65535 (the CUDA grid's y)");
  return narrow_geometry(g, kStep);
}

// The pixels of each sample grouped by selected region, in increasing order within a region (a stable
// counting sort: the reductions over a region's pixels then run in a fixed order). One block a sample,
// each thread a contiguous run of pixels: the argmax (kept in `region`), then per region a count, a
// block-wide exclusive scan and the scatter. order [B, L], offsets [B, r + 1] (region r's pixels are
// order[offsets[r] .. offsets[r + 1]]).
constexpr int kBucketThreads = 256;

__device__ int block_exclusive_scan(int value, int* scan, int& total) {
  scan[threadIdx.x] = value;
  __syncthreads();
  for (int d = 1; d < kBucketThreads; d *= 2) {
    const int add = threadIdx.x >= static_cast<unsigned>(d) ? scan[threadIdx.x - d] : 0;
    __syncthreads();
    scan[threadIdx.x] += add;
    __syncthreads();
  }
  total = scan[kBucketThreads - 1];
  const int inclusive = scan[threadIdx.x];
  __syncthreads();
  return inclusive - value;
}

template <typename scalar_t>
__global__ void bucket_pixels_kernel(const scalar_t* __restrict__ guide, int* __restrict__ region,
                                     int* __restrict__ order, int* __restrict__ offsets, int R, int L) {
  __shared__ int scan[kBucketThreads];
  const int64_t b = blockIdx.x;
  const scalar_t* guide_b = guide + b * R * L;
  int* region_b = region + b * L;
  int* order_b = order + b * L;
  const int run = (L + kBucketThreads - 1) / kBucketThreads;
  const int begin = min(L, static_cast<int>(threadIdx.x) * run), end = min(L, begin + run);
  for (int l = begin; l < end; ++l) region_b[l] = selected_region(guide_b + l, R, L);
  int base = 0;
  for (int r = 0; r < R; ++r) {
    int count = 0;
    for (int l = begin; l < end; ++l) count += region_b[l] == r;
    int total;
    int at = base + block_exclusive_scan(count, scan, total);
    if (threadIdx.x == 0) offsets[b * (R + 1) + r] = base;
    for (int l = begin; l < end; ++l) {
      if (region_b[l] == r) order_b[at++] = l;
    }
    base += total;
  }
  if (threadIdx.x == 0) offsets[b * (R + 1) + R] = L;
}

// The tiled products. A block computes a kTile × kTile tile of C[m, n] = Σ_t A[m, t]·B[t, n], staging
// kStep values of t of both operands in shared memory (the next step's loaded into registers while
// this one is multiplied), each thread 4 × 4 outputs: rows 4·ty.., columns 4·tx.., read as 4-vectors.
enum class Product { kForward, kGradColumns, kGradFilters, kGuide };

template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

template <typename acc_t>
struct ProductShared {
  union {
    struct {
      Quad<acc_t> a[kStep][kTile / 4 + 1];  // A[m, t] at a[t][m / 4].v[m % 4]; +1: 2-way conflicts when stored by t
      Quad<acc_t> b[kStep][kTile / 4 + 4];  // B[t, n]; +4: the two half-warps' rows on different banks
    } tiles;
    acc_t sums[kTile / 4][kTile];  // the guide's Σ over the 4·16 rows of the tile, by thread row
  };
  int pixels[kTile];  // the tile's pixels (forward, grad columns)
};

template <typename scalar_t, typename acc_t, Product kind>
__device__ void region_product(const scalar_t* __restrict__ x, const scalar_t* __restrict__ filters,
                               const scalar_t* __restrict__ grad, const int* __restrict__ order,
                               const int* __restrict__ offsets, scalar_t* __restrict__ out, acc_t* __restrict__ out_acc,
                               const ConvGeometry32 g, const int R) {
  __shared__ ProductShared<acc_t> smem;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int slices = (g.out_channels + kTile - 1) / kTile;  // the guide's tiles along Cout
  // The block's tile: sample b, region r, rows m0.., columns n0.. (bucketed: the region's pixels
  // first.. first + count), reduction length T.
  int64_t b;
  int r = 0, m0 = blockIdx.y * kTile, n0 = 0, first = 0, count = 0, T;
  if constexpr (kind == Product::kForward || kind == Product::kGradColumns) {
    const int tiles = (g.L + kTile - 1) / kTile + R;  // ≥ Σ_r ⌈n_r / kTile⌉
    b = blockIdx.x / tiles;
    int tile = blockIdx.x % tiles;
    const int* offsets_b = offsets + b * (R + 1);
    for (; r < R; ++r) {
      const int n_r = offsets_b[r + 1] - offsets_b[r], region_tiles = (n_r + kTile - 1) / kTile;
      if (tile < region_tiles) {
        first = offsets_b[r] + tile * kTile;
        count = min(kTile, n_r - tile * kTile);
        break;
      }
      tile -= region_tiles;
    }
    if (r == R) return;  // past the last region's tiles (the whole block)
    T = kind == Product::kForward ? g.K : g.out_channels;
    if (tid < count) smem.pixels[tid] = order[b * g.L + first + tid];
    __syncthreads();
  } else if constexpr (kind == Product::kGradFilters) {
    const int tiles = (g.K + kTile - 1) / kTile;
    b = blockIdx.x / (tiles * R);
    r = blockIdx.x / tiles % R;
    n0 = blockIdx.x % tiles * kTile;
    first = offsets[b * (R + 1) + r];
    T = offsets[b * (R + 1) + r + 1] - first;
  } else {
    const int tiles = (g.L + kTile - 1) / kTile;
    b = blockIdx.x / tiles;
    n0 = blockIdx.x % tiles * kTile;
    r = blockIdx.y / slices;
    m0 = blockIdx.y % slices * kTile;
    T = g.K;
  }
  const scalar_t* x_b = x + b * g.in_channels * g.height * g.width;
  const scalar_t* grad_b = grad + b * g.out_channels * g.L;
  const scalar_t* filter = filters + (b * R + r) * g.out_channels * g.K;  // W_r [Cout, K]
  const int* order_r = order + b * g.L + first;                          // the region's pixels (grad filters)
  const int M = kind == Product::kGradColumns ? g.K : g.out_channels;

  // What this thread stages: A rows a_m + 16·q at step column a_t (A[·, t] along t for W_r[o, k] and
  // grad, along m for W_r read transposed); B at row b_t, columns b_n + 16·q.
  constexpr bool kAAlongT = kind != Product::kGradColumns;
  const int a_t = kAAlongT ? tid % kStep : tid / kTile, a_m = kAAlongT ? tid / kStep : tid % kTile;
  const int b_t = tid / 16, b_n = tid % 16;
  Pixel pixel[kPerThread];  // forward, guide: the pixels of B's columns
  Tap column_tap[kPerThread] = {Tap(0, g), Tap(0, g), Tap(0, g), Tap(0, g)};  // grad filters: B's columns
  for (int q = 0; q < kPerThread; ++q) {
    const int n = b_n + 16 * q;
    if constexpr (kind == Product::kForward) {
      if (n < count) pixel[q] = Pixel(smem.pixels[n], g);
    } else if constexpr (kind == Product::kGuide) {
      if (n0 + n < g.L) pixel[q] = Pixel(n0 + n, g);
    } else if constexpr (kind == Product::kGradFilters) {
      column_tap[q] = Tap(n0 + n, g);
    }
  }
  Tap tap(b_t, g);  // forward, guide: B's row (one tap a step)

  acc_t a_next[kPerThread], b_next[kPerThread];
  auto load = [&](int t0) {
    if constexpr (kind == Product::kForward || kind == Product::kGuide) {
      const int k = t0 + a_t;
      for (int q = 0; q < kPerThread; ++q) {
        const int o = m0 + a_m + 16 * q;
        a_next[q] = o < g.out_channels && k < g.K ? static_cast<acc_t>(filter[o * g.K + k]) : acc_t(0);
        b_next[q] = im2col_entry<acc_t>(x_b, g, tap, pixel[q]);
      }
      tap.advance(g);
    } else if constexpr (kind == Product::kGradColumns) {
      for (int q = 0; q < kPerThread; ++q) {
        const int o = t0 + a_t + 4 * q, k = m0 + a_m;
        a_next[q] = o < g.out_channels && k < g.K ? static_cast<acc_t>(filter[o * g.K + k]) : acc_t(0);
        const int n = b_n + 16 * q, ob = t0 + b_t;
        b_next[q] = n < count && ob < g.out_channels ? static_cast<acc_t>(grad_b[ob * g.L + smem.pixels[n]]) : acc_t(0);
      }
    } else {  // grad filters: t runs over the region's pixels
      const int ja = t0 + a_t, jb = t0 + b_t;
      const int la = ja < T ? order_r[ja] : -1;
      const Pixel pb = jb < T ? Pixel(order_r[jb], g) : Pixel();
      for (int q = 0; q < kPerThread; ++q) {
        const int o = m0 + a_m + 16 * q;
        a_next[q] = la >= 0 && o < g.out_channels ? static_cast<acc_t>(grad_b[o * g.L + la]) : acc_t(0);
        b_next[q] = im2col_entry<acc_t>(x_b, g, column_tap[q], pb);
      }
    }
  };

  acc_t acc[4][4] = {};
  if (T > 0) load(0);
  for (int t0 = 0; t0 < T; t0 += kStep) {
    for (int q = 0; q < kPerThread; ++q) {
      const int m = kAAlongT ? a_m + 16 * q : a_m, t = kAAlongT ? a_t : a_t + 4 * q;
      smem.tiles.a[t][m / 4].v[m % 4] = a_next[q];
      const int n = b_n + 16 * q;
      smem.tiles.b[b_t][n / 4].v[n % 4] = b_next[q];
    }
    __syncthreads();
    if (t0 + kStep < T) load(t0 + kStep);
#pragma unroll
    for (int t = 0; t < kStep; ++t) {
      const Quad<acc_t> a = smem.tiles.a[t][ty], bq = smem.tiles.b[t][tx];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a.v[i] * bq.v[j];
      }
    }
    __syncthreads();
  }

  if constexpr (kind == Product::kGuide) {  // Σ_o grad[o, p]·(W_r x)[o, p] over the tile's rows, in order
    for (int j = 0; j < 4; ++j) {
      const int p = n0 + 4 * tx + j;
      acc_t sum = 0;
      for (int i = 0; i < 4; ++i) {
        const int o = m0 + 4 * ty + i;
        if (o < g.out_channels && p < g.L) sum += acc[i][j] * static_cast<acc_t>(grad_b[o * g.L + p]);
      }
      smem.sums[ty][4 * tx + j] = sum;
    }
    __syncthreads();
    if (tid < kTile && n0 + tid < g.L) {
      acc_t sum = 0;
      for (int y = 0; y < kTile / 4; ++y) sum += smem.sums[y][tid];
      out_acc[((b * R + r) * slices + m0 / kTile) * g.L + n0 + tid] = sum;
    }
  } else {
    for (int i = 0; i < 4; ++i) {
      const int m = m0 + 4 * ty + i;
      if (m >= M) break;
      for (int j = 0; j < 4; ++j) {
        const int n = 4 * tx + j;
        if constexpr (kind == Product::kForward) {
          if (n < count) out[(b * M + m) * g.L + smem.pixels[n]] = static_cast<scalar_t>(acc[i][j]);
        } else if constexpr (kind == Product::kGradColumns) {
          if (n < count) out_acc[(b * M + m) * g.L + smem.pixels[n]] = acc[i][j];
        } else if (n0 + n < g.K) {
          out[((b * R + r) * M + m) * g.K + n0 + n] = static_cast<scalar_t>(acc[i][j]);
        }
      }
    }
  }
}

// The four products as kernels of their own (one ptxas entry, one model row each).
template <typename scalar_t, typename acc_t>
__global__ void forward_product_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ filters,
                                       const int* __restrict__ order, const int* __restrict__ offsets,
                                       scalar_t* __restrict__ out, const ConvGeometry32 g, const int R) {
  region_product<scalar_t, acc_t, Product::kForward>(x, filters, nullptr, order, offsets, out, nullptr, g, R);
}

template <typename scalar_t, typename acc_t>
__global__ void grad_columns_product_kernel(const scalar_t* __restrict__ filters, const scalar_t* __restrict__ grad,
                                            const int* __restrict__ order, const int* __restrict__ offsets,
                                            acc_t* __restrict__ columns, const ConvGeometry32 g, const int R) {
  region_product<scalar_t, acc_t, Product::kGradColumns>(nullptr, filters, grad, order, offsets, nullptr, columns, g,
                                                         R);
}

template <typename scalar_t, typename acc_t>
__global__ void grad_filters_product_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad,
                                            const int* __restrict__ order, const int* __restrict__ offsets,
                                            scalar_t* __restrict__ grad_filters, const ConvGeometry32 g, const int R) {
  region_product<scalar_t, acc_t, Product::kGradFilters>(x, nullptr, grad, order, offsets, grad_filters, nullptr, g,
                                                         R);
}

template <typename scalar_t, typename acc_t>
__global__ void guide_product_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ filters,
                                     const scalar_t* __restrict__ grad, acc_t* __restrict__ partials,
                                     const ConvGeometry32 g, const int R) {
  region_product<scalar_t, acc_t, Product::kGuide>(x, filters, grad, nullptr, nullptr, nullptr, partials, g, R);
}

// ∂x from the columns' gradient [B, K, L]: each element of x gathers the taps that read it
// (output_of_tap), so no two threads write one element. Lanes on consecutive iw: coalesced rows.
template <typename scalar_t, typename acc_t>
__global__ void columns_to_image_kernel(const acc_t* __restrict__ columns, scalar_t* __restrict__ grad_x,
                                        const ConvGeometry32 g, int tiles) {  // blocks: B × tiles
  const int plane = g.height * g.width, per_sample = g.in_channels * plane;
  const int64_t b = blockIdx.x / tiles;
  const int idx = blockIdx.x % tiles * kThreads + threadIdx.x;
  if (idx >= per_sample) return;
  const int i = g.by_plane.div(idx), ih = g.by_width.div(idx - i * plane), iw = idx - i * plane - ih * g.width;
  const acc_t* columns_i = columns + b * g.K * g.L + i * g.kernel_h * g.kernel_w * g.L;
  acc_t sum = 0;
  for (int u = 0; u < g.kernel_h; ++u) {
    const int oh = output_of_tap(ih, u, g.stride_h, g.pad_h, g.dilation_h, g.out_height);
    if (oh < 0) continue;
    for (int v = 0; v < g.kernel_w; ++v) {
      const int ow = output_of_tap(iw, v, g.stride_w, g.pad_w, g.dilation_w, g.out_width);
      if (ow >= 0) sum += columns_i[(u * g.kernel_w + v) * g.L + oh * g.out_width + ow];
    }
  }
  grad_x[b * per_sample + idx] = static_cast<scalar_t>(sum);
}

// The guide's gradient per pixel: G_r = Σ of the guide product's partials (the Cout slices, in order),
// stored once in slice 0, then region_conv.h's guide_gradient.
template <typename scalar_t, typename acc_t>
__global__ void guide_gradient_kernel(acc_t* __restrict__ partials, const scalar_t* __restrict__ guide,
                                      scalar_t* __restrict__ grad_guide, int R, int slices, int L,
                                      int tiles) {  // blocks: B × tiles
  const int64_t b = blockIdx.x / tiles;
  const int p = blockIdx.x % tiles * kThreads + threadIdx.x;
  if (p >= L) return;
  acc_t* responses = partials + b * R * slices * L + p;  // G_r at responses[r·slices·L]
  for (int r = 0; r < R; ++r) {
    acc_t sum = 0;
    for (int s = 0; s < slices; ++s) sum += responses[(r * slices + s) * L];
    responses[r * slices * L] = sum;
  }
  guide_gradient<acc_t>(guide + b * R * L + p, grad_guide + b * R * L + p, R, L,
                        [&](int r) { return responses[r * slices * L]; });
}

// A grid of B × ⌈per_sample / kThreads⌉ blocks, checked against the CUDA grid.
int64_t sample_blocks(int64_t B, int64_t per_sample, const char* op) {
  const int64_t blocks = B * ceil_div(per_sample, kThreads);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), op, ": ", blocks, " blocks exceed the CUDA grid");
  return blocks;
}

struct Buckets {
  at::Tensor order, offsets;  // int32 [B, L], [B, r + 1]
};

Buckets bucket_pixels(const at::Tensor& guide, int64_t B, int64_t R, int64_t L) {
  auto options = guide.options().dtype(at::kInt);
  Buckets buckets{at::empty({B, L}, options), at::empty({B, R + 1}, options)};
  auto region = at::empty({B, L}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, guide.scalar_type(), "bucket_pixels_cuda", [&] {
    ATTNKERN_LAUNCH(dim3(static_cast<unsigned>(B)), kBucketThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    bucket_pixels_kernel<scalar_t>)(
        guide.const_data_ptr<scalar_t>(), region.mutable_data_ptr<int>(), buckets.order.mutable_data_ptr<int>(),
        buckets.offsets.mutable_data_ptr<int>(), static_cast<int>(R), static_cast<int>(L));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return buckets;
}

// Blocks of the bucketed products along x: per sample, ⌈L/kTile⌉ + r bounds Σ_r ⌈n_r/kTile⌉.
dim3 bucketed_grid(int64_t B, const ConvGeometry32& g, int64_t R, int64_t rows, const char* op) {
  const int64_t blocks = B * (ceil_div(g.L, kTile) + R);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), op, ": ", blocks, " blocks exceed the CUDA grid");
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(ceil_div(rows, kTile)));
}

at::Tensor dynamic_region_conv_cuda(const at::Tensor& x_in, const at::Tensor& filters_in, const at::Tensor& guide_in,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "dynamic_region_conv";
  const auto geometry = conv_geometry(x_in, filters_in, guide_in, stride, padding, dilation, op);
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous(), filters = filters_in.contiguous(), guide = guide_in.contiguous();
  const int64_t B = x.size(0), R = filters.size(1);
  auto out = at::empty({B, geometry.out_channels, geometry.out_height, geometry.out_width}, x.options());
  if (out.numel() == 0) return out;
  const auto g = geometry32(geometry, R, op);
  TORCH_CHECK(B <= std::numeric_limits<int32_t>::max(), op, ": batch ", B, " exceeds the CUDA grid");
  const auto buckets = bucket_pixels(guide, B, R, g.L);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynamic_region_conv_cuda", [&] {
    ATTNKERN_LAUNCH(bucketed_grid(B, g, R, g.out_channels, op), kThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    forward_product_kernel<scalar_t, at::opmath_type<scalar_t>>)(
        x.const_data_ptr<scalar_t>(), filters.const_data_ptr<scalar_t>(), buckets.order.const_data_ptr<int>(),
        buckets.offsets.const_data_ptr<int>(), out.mutable_data_ptr<scalar_t>(), g, static_cast<int>(R));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_region_conv_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& filters_in, const at::Tensor& guide_in,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "dynamic_region_conv_backward";
  const auto geometry = conv_geometry(x_in, filters_in, guide_in, stride, padding, dilation, op);
  const int64_t B = x_in.size(0), R = filters_in.size(1);
  check_conv_grad(grad_in, x_in, geometry, op);
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous(), filters = filters_in.contiguous(), guide = guide_in.contiguous();
  auto grad = grad_in.contiguous();
  auto grad_x = at::empty_like(x), grad_filters = at::empty_like(filters), grad_guide = at::empty_like(guide);
  if (B == 0) return {grad_x, grad_filters, grad_guide};
  const auto g = geometry32(geometry, R, op);
  TORCH_CHECK(B <= std::numeric_limits<int32_t>::max(), op, ": batch ", B, " exceeds the CUDA grid");
  const auto buckets = bucket_pixels(guide, B, R, g.L);
  const int slices = static_cast<int>(ceil_div(g.out_channels, kTile));
  const int R32 = static_cast<int>(R);
  const int* order = buckets.order.const_data_ptr<int>();
  const int* offsets = buckets.offsets.const_data_ptr<int>();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynamic_region_conv_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    // ∂x: the columns' gradient of each region's pixels, then each element of x gathers its taps.
    auto columns = at::empty({B, g.K, g.L}, acc_options);
    ATTNKERN_LAUNCH(bucketed_grid(B, g, R, g.K, op), kThreads, 0, stream, grad_columns_product_kernel<scalar_t, acc_t>)(
        filters.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(), order, offsets,
        columns.mutable_data_ptr<acc_t>(), g, R32);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t per_sample = x.numel() / B;
    ATTNKERN_LAUNCH(dim3(static_cast<unsigned>(sample_blocks(B, per_sample, op))), kThreads, 0, stream,
                    columns_to_image_kernel<scalar_t, acc_t>)(
        columns.const_data_ptr<acc_t>(), grad_x.mutable_data_ptr<scalar_t>(), g,
        static_cast<int>(ceil_div(per_sample, kThreads)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (g.out_channels > 0) {
      // ∂filters: per region, the product of its pixels' gradients and columns.
      const int64_t blocks = B * R * ceil_div(g.K, kTile);
      TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), op, ": ", blocks, " blocks exceed the CUDA grid");
      ATTNKERN_LAUNCH(dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(slices)), kThreads, 0, stream,
                      grad_filters_product_kernel<scalar_t, acc_t>)(
          x.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(), order, offsets,
          grad_filters.mutable_data_ptr<scalar_t>(), g, R32);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // ∂guide: every region's response at every pixel, in partials over the Cout slices.
    // (With Cout = 0 no product runs: the responses are zeros.)
    auto partials = g.out_channels > 0 ? at::empty({B, R, slices, g.L}, acc_options)
                                       : at::zeros({B, R, 1, g.L}, acc_options);
    if (g.out_channels > 0) {
      const int64_t blocks = B * ceil_div(g.L, kTile);
      TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), op, ": ", blocks, " blocks exceed the CUDA grid");
      ATTNKERN_LAUNCH(dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(R * slices)), kThreads, 0, stream,
                      guide_product_kernel<scalar_t, acc_t>)(
          x.const_data_ptr<scalar_t>(), filters.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
          partials.mutable_data_ptr<acc_t>(), g, R32);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    ATTNKERN_LAUNCH(dim3(static_cast<unsigned>(sample_blocks(B, g.L, op))), kThreads, 0, stream,
                    guide_gradient_kernel<scalar_t, acc_t>)(
        partials.mutable_data_ptr<acc_t>(), guide.const_data_ptr<scalar_t>(), grad_guide.mutable_data_ptr<scalar_t>(),
        R32, std::max(slices, 1), g.L, static_cast<int>(ceil_div(g.L, kThreads)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_filters, grad_guide};
}

}  // namespace

ATTNKERN_CUDA_KERNELS(m) {
  m.impl("region_assign", &region_assign_cuda);
  m.impl("region_assign_backward", &region_assign_backward_cuda);
  m.impl("dynamic_region_conv", &dynamic_region_conv_cuda);
  m.impl("dynamic_region_conv_backward", &dynamic_region_conv_backward_cuda);
}

}  // namespace region_conv
}  // namespace attnkern
