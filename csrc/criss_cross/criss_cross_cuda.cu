// CUDA kernels of the criss-cross family. Affinity and aggregation: one thread per output element,
// through the shared entry functions of criss_cross.h (consecutive threads take consecutive w, so
// loads along a row coalesce). Fused attention: batched GEMMs around a fused softmax (below).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cuda_utils.cuh"
#include "common/cuda_vector.cuh"
#include "criss_cross/criss_cross.h"
#include "criss_cross/criss_cross_checks.h"

namespace attnkern {
namespace criss_cross {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void affinity_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                scalar_t* __restrict__ energy, int64_t C, int64_t H, int64_t W, int64_t total) {
  const int64_t P = H + W - 1;
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {  // idx = ((b·P + p)·H + h)·W + w
    const int64_t w = idx % W, h = (idx / W) % H, p = (idx / (H * W)) % P, b = idx / (P * H * W);
    energy[idx] = static_cast<scalar_t>(affinity_entry<acc_t>(q + b * C * H * W, k + b * C * H * W, C, H, W, p, h, w));
  }
}

template <bool transposed, typename scalar_t, typename acc_t>
__global__ void aggregate_kernel(const scalar_t* __restrict__ attn, const scalar_t* __restrict__ x,
                                 scalar_t* __restrict__ out, int64_t C, int64_t H, int64_t W, int64_t total) {
  const int64_t P = H + W - 1;
  ATTNKERN_GRID_STRIDE_LOOP(idx, total) {  // idx = ((b·C + c)·H + h)·W + w
    const int64_t w = idx % W, h = (idx / W) % H, plane = idx / (H * W), b = plane / C;
    const scalar_t* a_b = attn + b * P * H * W;
    const scalar_t* x_plane = x + plane * H * W;
    const acc_t value = transposed ? aggregate_transposed_entry<acc_t>(a_b, x_plane, H, W, h, w)
                                   : aggregate_entry<acc_t>(a_b, x_plane, H, W, h, w);
    out[idx] = static_cast<scalar_t>(value);
  }
}

at::Tensor affinity_cuda(const at::Tensor& q_in, const at::Tensor& k_in) {
  check_affinity_inputs(q_in, k_in);
  c10::cuda::CUDAGuard guard(q_in.device());
  auto q = q_in.contiguous(), k = k_in.contiguous();
  const int64_t B = q.size(0), C = q.size(1), H = q.size(2), W = q.size(3);
  auto energy = at::empty({B, H + W - 1, H, W}, q.options());
  const int64_t total = energy.numel();
  if (total == 0) return energy;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "criss_cross_affinity_cuda", [&] {
    ATTNKERN_LAUNCH(element_blocks(total), kElementThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    affinity_kernel<scalar_t, at::opmath_type<scalar_t>>)(
            q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), energy.mutable_data_ptr<scalar_t>(), C, H, W,
            total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return energy;
}

template <bool transposed>
at::Tensor aggregate_cuda(const at::Tensor& attn_in, const at::Tensor& x_in) {
  check_aggregate_inputs(attn_in, x_in, transposed ? "criss_cross_aggregate_transposed" : "criss_cross_aggregate",
                         transposed ? "x" : "v");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto attn = attn_in.contiguous(), x = x_in.contiguous();
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  auto out = at::empty_like(x);
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "criss_cross_aggregate_cuda", [&] {
    ATTNKERN_LAUNCH(element_blocks(total), kElementThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    aggregate_kernel<transposed, scalar_t, at::opmath_type<scalar_t>>)(
            attn.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), C, H, W,
            total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ---- fused attention: batched GEMMs (cuBLAS, through ATen) around a fused softmax --------------------
// The row positions of the pixels of image row h and the column positions of the pixels of image column w
// are the products of small matrices:
//   E_row[b, h] = Q_h·K_hᵀ   [W, W], Q_h = q[b, :, h, :]ᵀ [W, Cq]   (E_row[b, h][w, w'] = q(h, w)·k(h, w'))
//   E_col[b, w] = Q_w·K_wᵀ   [H, H], Q_w = q[b, :, :, w]ᵀ [H, Cq]   (its diagonal, the pixel itself, is no position)
//   out[b, :, h, :]  = V_h·A_row[b, h]ᵀ,  out[b, :, :, w] += V_w·A_col[b, w]ᵀ,
// as the CPU kernel computes them tile by tile; here each is one batched GEMM (or one a sample) over the
// whole batch — the row and the column products one GEMM where their shapes agree (square images) — and the
// softmax over a pixel's W + H − 1 energies is one kernel, a warp per pixel. q and k (C/8 channels) are copied
// into both layouts in the inputs' type, every product (16-bit operands: on tensor cores) summed in the
// accumulation type. v, whose column matrices V_w have no unit stride in [B, C, H, W], is transposed once
// through shared memory, and so are the column products on their way back. While the op
// runs, the energies (accumulation type) and the weights take B·H·W·(H + W) values each, the size of the
// [B, P, H, W] maps; the backward adds dS (accumulation type) and, for 16-bit inputs, dE (the inputs' type),
// and keeps only the per-pixel log-sum-exp between the two.

constexpr int kTile = 32;  // transpose tiles: 32 (·V) × 32 values, a block of 32×8 threads
constexpr int kTileRows = 8;
constexpr int kSoftmaxWarps = 8;  // the softmax kernels: a warp per pixel, 8 a block
static_assert(kTile * kTileRows == kElementThreads && 32 * kSoftmaxWarps == kElementThreads);

// v's planes in two layouts: the image layout [N, L, W] (L = C·H rows of W values) and the column layout
// [N, W, L] (the column matrices: rows of L values). A block moves a tile of 32·V image rows × 32 columns
// through shared memory. On the image side a warp takes 32 consecutive values of an image row (one a lane:
// W is any length); on the column side, 32·V consecutive values of a column row, V a lane in one access of
// up to 16 bytes (V: layout_vector_width, at most what L and the column-layout address allow). The
// tile's value (l, w) sits at tile[l][w ^ l / V]: an image-side access (one l, 32 w) and a column-side step
// (l = lane·V + k, k fixed: l / V = lane) each touch 32 different banks (2-byte values: 16 words, two lanes
// a word), so neither phase has a bank conflict. With kRowLayout, `rows` (the row layout [N, H, C, W], L = C·H) is
// written beside the column layout, each value as it is read, or, back into the image, its row products are
// added to each value as it is written: image row l = c·H + h is rows' row h·C + c, the pair (c, h) stepped with
// l, with no division a step. Into the column layout, the planes from n = head_planes on may come from a second
// image, src_tail.
template <bool kToColumns, bool kRowLayout, int V, typename scalar_t>
__global__ void transpose_kernel(const scalar_t* __restrict__ src, const scalar_t* __restrict__ src_tail,
                                 int64_t head_planes, scalar_t* __restrict__ dst, scalar_t* __restrict__ rows,
                                 int64_t L, int64_t H, int64_t W, int64_t tiles_l, int64_t tiles_w, int64_t tiles) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kRows = kTile * V;
  __shared__ scalar_t tile[kRows][kTile];
  const int64_t C = kRowLayout ? L / H : 0;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // t = (n·tiles_l + l tile)·tiles_w + w tile
    const int64_t n = t / (tiles_l * tiles_w), l0 = t / tiles_w % tiles_l * kRows, w0 = t % tiles_w * kTile;
    const int64_t plane = n * L * W;
    const scalar_t* from = n < head_planes ? src + plane : src_tail + (plane - head_planes * L * W);
    auto image_side = [&] {
      int64_t c = kRowLayout ? (l0 + threadIdx.y) / H : 0, h = l0 + threadIdx.y - c * H;  // of l, for the rows
      for (int i = threadIdx.y; i < kRows; i += kTileRows) {
        const int64_t l = l0 + i, w = w0 + threadIdx.x;
        if (l < L && w < W) {
          scalar_t& cell = tile[i][threadIdx.x ^ i / V];
          if constexpr (kToColumns) {
            cell = from[l * W + w];
            if constexpr (kRowLayout) rows[plane + (h * C + c) * W + w] = cell;
          } else if constexpr (!kRowLayout) {
            dst[plane + l * W + w] = cell;
          } else {
            const acc_t row_product = rows[plane + (h * C + c) * W + w];
            dst[plane + l * W + w] = static_cast<scalar_t>(static_cast<acc_t>(cell) + row_product);
          }
        }
        if constexpr (kRowLayout) {
          for (h += kTileRows; h >= H; h -= H) ++c;
        }
      }
    };
    auto column_side = [&] {
      for (int i = threadIdx.y; i < kTile; i += kTileRows) {
        const int64_t w = w0 + i, l = l0 + threadIdx.x * V;
        if (w >= W || l >= L) continue;  // L is a multiple of V: a lane's values are all in or all out
        alignas(V * sizeof(scalar_t)) scalar_t values[V];
        if constexpr (!kToColumns) copy_elements(values, from + w * L + l, V);
        for (int k = 0; k < V; ++k) {
          scalar_t& cell = tile[threadIdx.x * V + k][i ^ threadIdx.x];
          if constexpr (kToColumns) values[k] = cell;
          else cell = values[k];
        }
        if constexpr (kToColumns) copy_elements(dst + plane + w * L + l, values, V);
      }
    };
    if constexpr (kToColumns) image_side();
    else column_side();
    __syncthreads();
    if constexpr (kToColumns) column_side();
    else image_side();
    __syncthreads();
  }
}

// The copy width V of change_layout: the widest vector_width allows whose grid still fills the GPU (a wave:
// kTransposeBlocksPerSm tiles an SM); a grid smaller than a wave even at V = 1 takes V = 1, the most tiles.
constexpr int kTransposeBlocksPerSm = 8;  // 256 threads a block, 2048 an SM (the 16 KiB tiles allow 13)

int layout_vector_width(int64_t N, int64_t L, int64_t W, int widest) {
  const int64_t wave = kTransposeBlocksPerSm * current_device_attribute(cudaDevAttrMultiProcessorCount);
  for (int vec = widest; vec > 1; vec /= 2) {
    if (N * ceil_div(L, kTile * vec) * ceil_div(W, kTile) >= wave) return vec;
  }
  return 1;
}

// images [N, L, W] (one, or two whose planes follow each other in columns) into columns [N·count, W, L], and one
// image into rows [N, H, L / H, W] too where defined (kToColumns); or columns back into one image, plus rows where
// defined.
template <bool kToColumns>
void change_layout(at::TensorList images, const at::Tensor& columns, const at::Tensor& rows = {}, int64_t H = 1) {
  const at::Tensor& image = images[0];
  const int64_t N = columns.size(0), L = image.size(1), W = image.size(2);
  if (N * L * W == 0) return;
  const at::Tensor& src = kToColumns ? image : columns;
  const at::Tensor& dst = kToColumns ? columns : image;
  const at::Tensor& src_tail = images.size() > 1 ? images[1] : src;
  TORCH_INTERNAL_ASSERT(images.size() == 1 || !rows.defined(), "a row layout is written for one image");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "criss_cross_transpose_cuda", [&] {
    constexpr int kWidest = 16 / sizeof(scalar_t);
    const int vec = layout_vector_width(N, L, W, vector_width(L, sizeof(scalar_t), {columns.const_data_ptr()}));
    with_vector_width<kWidest>(vec, [&](auto vector) {
      constexpr int V = decltype(vector)::value;
      const int64_t tiles_l = ceil_div(L, kTile * V), tiles_w = ceil_div(W, kTile), tiles = N * tiles_l * tiles_w;
      auto launch = [&](auto with_rows) {
        ATTNKERN_LAUNCH(capped_blocks(tiles), dim3(kTile, kTileRows), 0,  // a block a tile
                        c10::cuda::getCurrentCUDAStream(),
                        transpose_kernel<kToColumns, decltype(with_rows)::value, V, scalar_t>)(
            src.const_data_ptr<scalar_t>(), src_tail.const_data_ptr<scalar_t>(), image.size(0),
            dst.mutable_data_ptr<scalar_t>(), rows.defined() ? rows.data_ptr<scalar_t>() : nullptr, L, H, W,
            tiles_l, tiles_w, tiles);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (rows.defined()) launch(std::true_type{});
      else launch(std::false_type{});
    });
  });
}

// xs [B, C, H, W] (one, or two of one shape: one launch) as the column matrices of the products, [B·W, C, H] each,
// one after the other.
at::Tensor column_matrices(at::TensorList xs) {
  const at::Tensor& x = xs[0];
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), count = xs.size();
  auto columns = at::empty({count * B * W, C, H}, x.options());
  std::vector<at::Tensor> images;
  for (const auto& image : xs) images.push_back(image.view({B, C * H, W}));
  change_layout<true>(images, columns.view({count * B, W, C * H}));
  return columns;
}

// The column products [B·W, C, H] into out [B, C, H, W], plus the row products [B·H, C, W] where defined.
void columns_into(const at::Tensor& columns, at::Tensor& out, const at::Tensor& rows = {}) {
  const int64_t B = out.size(0), C = out.size(1), H = out.size(2), W = out.size(3);
  change_layout<false>({out.view({B, C * H, W})}, columns.view({B, W, C * H}), rows, H);
}

// q and k [B, C, H, W] pixel-major: the row matrices [B·H, W, C] and the column matrices [B·W, H, C] of each, and
// back: the gradients ∂q, ∂k as the sums of their row and column matrices. A block takes a tile of 32 channels ×
// 32 pixels of one image row (blockIdx.y: q or k), read along w and written along c, or read along c and written
// along w, through shared memory.
struct PixelTile {
  int64_t b, h, c0, w0, row;  // row = b·H + h

  // Offsets of (channel c, column w) of the tile's image row: in the image [B, C, H, W], in the row-major
  // matrices [B·H, W, C] and in the column-major ones [B·W, H, C].
  __device__ int64_t image(int64_t c, int64_t w, int64_t C, int64_t H, int64_t W) const {
    return ((b * C + c) * H + h) * W + w;
  }
  __device__ int64_t in_rows(int64_t c, int64_t w, int64_t C, int64_t W) const { return (row * W + w) * C + c; }
  __device__ int64_t in_columns(int64_t c, int64_t w, int64_t C, int64_t H, int64_t W) const {
    return ((b * W + w) * H + h) * C + c;
  }
};

__device__ inline PixelTile pixel_tile(int64_t t, int64_t H, int64_t tiles_c, int64_t tiles_w) {
  const int64_t row = t / (tiles_w * tiles_c);  // t = ((b·H + h)·tiles_c + c tile)·tiles_w + w tile
  return {row / H, row % H, t / tiles_w % tiles_c * kTile, t % tiles_w * kTile, row};
}

template <typename scalar_t>
__global__ void pixel_major_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                   scalar_t* __restrict__ q_rows, scalar_t* __restrict__ q_cols,
                                   scalar_t* __restrict__ k_rows, scalar_t* __restrict__ k_cols, int64_t C, int64_t H,
                                   int64_t W, int64_t tiles_c, int64_t tiles_w, int64_t tiles) {
  __shared__ scalar_t tile[kTile][kTile + 1];
  const scalar_t* x = blockIdx.y == 0 ? q : k;
  scalar_t* rows = blockIdx.y == 0 ? q_rows : k_rows;
  scalar_t* columns = blockIdx.y == 0 ? q_cols : k_cols;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const PixelTile p = pixel_tile(t, H, tiles_c, tiles_w);
    for (int i = threadIdx.y; i < kTile; i += kTileRows) {
      const int64_t c = p.c0 + i, w = p.w0 + threadIdx.x;
      if (c < C && w < W) tile[i][threadIdx.x] = x[p.image(c, w, C, H, W)];
    }
    __syncthreads();
    for (int i = threadIdx.y; i < kTile; i += kTileRows) {
      const int64_t w = p.w0 + i, c = p.c0 + threadIdx.x;
      if (w < W && c < C) {
        rows[p.in_rows(c, w, C, W)] = tile[threadIdx.x][i];
        columns[p.in_columns(c, w, C, H, W)] = tile[threadIdx.x][i];
      }
    }
    __syncthreads();
  }
}

// grad_x[b, c, h, w] = rows[b·H + h][w][c] + columns[b·W + w][h][c], summed in the accumulation type (the rows' and
// columns' type) and rounded once; x: q (blockIdx.y = 0) or k.
template <typename scalar_t, typename acc_t>
__global__ void pixel_major_sum_kernel(const acc_t* __restrict__ q_rows, const acc_t* __restrict__ q_cols,
                                       const acc_t* __restrict__ k_rows, const acc_t* __restrict__ k_cols,
                                       scalar_t* __restrict__ grad_q, scalar_t* __restrict__ grad_k, int64_t C,
                                       int64_t H, int64_t W, int64_t tiles_c, int64_t tiles_w, int64_t tiles) {
  __shared__ acc_t tile[kTile][kTile + 1];
  const acc_t* rows = blockIdx.y == 0 ? q_rows : k_rows;
  const acc_t* columns = blockIdx.y == 0 ? q_cols : k_cols;
  scalar_t* grad = blockIdx.y == 0 ? grad_q : grad_k;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const PixelTile p = pixel_tile(t, H, tiles_c, tiles_w);
    for (int i = threadIdx.y; i < kTile; i += kTileRows) {
      const int64_t w = p.w0 + i, c = p.c0 + threadIdx.x;
      if (w < W && c < C) {
        tile[threadIdx.x][i] = rows[p.in_rows(c, w, C, W)] + columns[p.in_columns(c, w, C, H, W)];
      }
    }
    __syncthreads();
    for (int i = threadIdx.y; i < kTile; i += kTileRows) {
      const int64_t c = p.c0 + i, w = p.w0 + threadIdx.x;
      if (c < C && w < W) grad[p.image(c, w, C, H, W)] = static_cast<scalar_t>(tile[i][threadIdx.x]);
    }
    __syncthreads();
  }
}

// The row and column matrices of one quantity, [B·H, W, n] and [B·W, H, m], as two views of one buffer, rows first.
// Where the two have the same shape (square images and n = m), `both` views them as one batch [2·B·H, W, n]: the
// row and column products of such pairs are then one GEMM.
struct RowsAndColumns {
  at::Tensor rows, columns, both;
};

RowsAndColumns rows_and_columns(at::IntArrayRef row_sizes, at::IntArrayRef column_sizes,
                                const at::TensorOptions& options) {
  const int64_t row_numel = c10::multiply_integers(row_sizes), column_numel = c10::multiply_integers(column_sizes);
  auto buffer = at::empty({row_numel + column_numel}, options);
  RowsAndColumns out{buffer.narrow(0, 0, row_numel).view(row_sizes),
                     buffer.narrow(0, row_numel, column_numel).view(column_sizes), {}};
  if (row_sizes.equals(column_sizes)) out.both = buffer.view({2 * row_sizes[0], row_sizes[1], row_sizes[2]});
  return out;
}

RowsAndColumns transposed(const RowsAndColumns& x) {
  return {x.rows.transpose(1, 2), x.columns.transpose(1, 2), x.both.defined() ? x.both.transpose(1, 2) : x.both};
}

// C values for each pixel, pixel-major: rows [B·H, W, C], columns [B·W, H, C] (q and k, and their gradients).
RowsAndColumns per_pixel(int64_t B, int64_t H, int64_t W, int64_t C, const at::TensorOptions& options) {
  return rows_and_columns({B * H, W, C}, {B * W, H, C}, options);
}

// A value for each pixel and position: rows [B·H, W, W], columns [B·W, H, H] (the energies and their kin).
RowsAndColumns per_position(int64_t B, int64_t H, int64_t W, const at::TensorOptions& options) {
  return rows_and_columns({B * H, W, W}, {B * W, H, H}, options);
}

// The row layout [B·H, C, W] and the column layout [B·W, C, H] of a tensor shaped as x [B, C, H, W] (v, g and
// the products of their matrices).
RowsAndColumns matrices_like(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  return rows_and_columns({B * H, C, W}, {B * W, C, H}, x.options());
}

// The row and column matrices of q and k (pixel_major_kernel).
struct PixelMajor {
  RowsAndColumns q, k;
};

int64_t pixel_tiles(int64_t B, int64_t C, int64_t H, int64_t W) {
  return B * H * ceil_div(C, kTile) * ceil_div(W, kTile);
}

PixelMajor pixel_major(const at::Tensor& q_in, const at::Tensor& k_in) {
  auto q = q_in.contiguous(), k = k_in.contiguous();
  const int64_t B = q.size(0), C = q.size(1), H = q.size(2), W = q.size(3);
  PixelMajor out{per_pixel(B, H, W, C, q.options()), per_pixel(B, H, W, C, q.options())};
  const int64_t tiles = pixel_tiles(B, C, H, W);
  if (tiles == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "criss_cross_pixel_major_cuda", [&] {
    ATTNKERN_LAUNCH(dim3(capped_blocks(tiles), 2), dim3(kTile, kTileRows), 0,  // a block a tile
                    c10::cuda::getCurrentCUDAStream(), pixel_major_kernel<scalar_t>)(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), out.q.rows.mutable_data_ptr<scalar_t>(),
        out.q.columns.mutable_data_ptr<scalar_t>(), out.k.rows.mutable_data_ptr<scalar_t>(),
        out.k.columns.mutable_data_ptr<scalar_t>(), C, H, W, ceil_div(C, kTile), ceil_div(W, kTile), tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// grad_q and grad_k [B, C, H, W] (contiguous) from their pixel-major row and column parts (pixel_major_sum_kernel).
void pixel_major_sums(const RowsAndColumns& dq, const RowsAndColumns& dk, at::Tensor& grad_q, at::Tensor& grad_k) {
  const int64_t B = grad_q.size(0), C = grad_q.size(1), H = grad_q.size(2), W = grad_q.size(3);
  const int64_t tiles = pixel_tiles(B, C, H, W);
  if (tiles == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_q.scalar_type(), "criss_cross_pixel_sums_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ATTNKERN_LAUNCH(dim3(capped_blocks(tiles), 2), dim3(kTile, kTileRows), 0,  // a block a tile
                    c10::cuda::getCurrentCUDAStream(), pixel_major_sum_kernel<scalar_t, acc_t>)(
        dq.rows.const_data_ptr<acc_t>(), dq.columns.const_data_ptr<acc_t>(), dk.rows.const_data_ptr<acc_t>(),
        dk.columns.const_data_ptr<acc_t>(), grad_q.mutable_data_ptr<scalar_t>(), grad_k.mutable_data_ptr<scalar_t>(), C,
        H, W, ceil_div(C, kTile), ceil_div(W, kTile), tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// out = a·b (batched), summed in and written as out's dtype, the accumulation type: cuBLAS's mixed-precision
// GEMM for half and bfloat16 operands. The emulated device's CPU tensors have no such GEMM; there the
// operands are widened first (the same products, summed in float).
at::Tensor& accumulating_bmm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == out.scalar_type()) return at::bmm_out(out, a, b);
#if defined(ATTNKERN_CUDA_EMULATION)
  return at::bmm_out(out, a.to(out.scalar_type()), b.to(out.scalar_type()));
#else
  return at::bmm_out(out, a, b, out.scalar_type());
#endif
}

// The row matrices X_h = x[b, :, h, :] of x [B, C, H, W] lie W apart within a sample but C·H·W apart across
// samples, two strides where a cuBLAS batch takes one. Their products (the outputs' rows, and the backward's
// dS and ∂v rows) are either one batched GEMM a sample over x where it lies (B launches a product), or one GEMM
// over all B·H rows of x copied into the row layout [B·H, C, W] by the transpose that writes its column layout
// — one GEMM with the column products where the two have one shape (square images) — added to the column
// products as the transpose writes them back. Against the calls a sample that is one more pass over x a
// product (the copy's write, and the products' read back, against baddbmm's read of the outputs), carried by
// the transposes, which move it at about half a GEMM's rate (the performance model): two passes' time, for B
// launches fewer (B − 1 beside column products of another shape). The copy wins where the launches it saves
// outlast that: a small kernel's launch and tail take about as long as moving kLaunchBytes through HBM (~4 µs
// at ~4 TB/s on an H100 or H200).
constexpr int64_t kLaunchBytes = int64_t{16} << 20;

bool rows_in_one_call(const at::Tensor& x) {
  const int64_t B = x.size(0), saved = x.size(2) == x.size(3) ? B : B - 1;
  return saved * kLaunchBytes > 2 * static_cast<int64_t>(x.nbytes());
}

// Views of x [B, C, H, W]'s sample b as a batch over rows: [H, C, W].
at::Tensor row_matrices(const at::Tensor& x, int64_t b) { return x[b].transpose(0, 1); }

// x [B, C, H, W] in the row layout [B·H, C, W] and the column layout [B·W, C, H]: one transpose writes both.
RowsAndColumns row_and_column_matrices(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto out = matrices_like(x);
  change_layout<true>({x.view({B, C * H, W})}, out.columns.view({B, W, C * H}), out.rows, H);
  return out;
}

// The row and column products a·b into out (accumulating_bmm_out): one call where all three are one batch.
void accumulating_bmm_out(RowsAndColumns& out, const RowsAndColumns& a, const RowsAndColumns& b) {
  if (out.both.defined() && a.both.defined() && b.both.defined()) {
    accumulating_bmm_out(out.both, a.both, b.both);
  } else {
    accumulating_bmm_out(out.rows, a.rows, b.rows);
    accumulating_bmm_out(out.columns, a.columns, b.columns);
  }
}

// The energies of every pixel (see above), in the accumulation type.
RowsAndColumns energies(const PixelMajor& x) {
  const auto& q = x.q.rows;
  const int64_t W = q.size(1), H = x.q.columns.size(1), B = q.size(0) / H;
  auto e = per_position(B, H, W, q.options().dtype(at::toOpMathType(q.scalar_type())));
  accumulating_bmm_out(e, x.q, transposed(x.k));
  return e;
}

// One pixel's energies: its row E_row[b, h][w, :] (W values from offset `row`) and column E_col[b, w][h, :]
// (H values from `column`, the one at index `self` = h — the pixel itself — no position); the same offsets
// index the weights and the gradients. pixel = (b·H + h)·W + w.
struct PixelLists {
  int64_t row, column, self;
};

__device__ inline PixelLists pixel_lists(int64_t pixel, int64_t H, int64_t W) {
  const int64_t w = pixel % W, h = pixel / W % H, b = pixel / (H * W);
  return {pixel * W, ((b * W + w) * H + h) * H, h};
}

// A pixel's lists as a warp holds them, lane-strided (position j at lane j % 32): `kLists` lists of `size`
// values read at the same positions (the energies, or the energies and their gradients). The first
// kCachedPerLane·32 positions are loaded into registers at once, every load in flight before the first is
// used, and reused by each pass over the list; positions past them (lists longer than CCNet's) are read
// from memory where a pass uses them.
constexpr int kCachedPerLane = 4;  // lists of up to 128 positions held in registers

template <typename acc_t, int kLists>
struct LaneLists {
  const acc_t* const* sources;
  int64_t size;
  acc_t cached[kCachedPerLane][kLists];

  __device__ LaneLists(const acc_t* const (&lists)[kLists], int64_t size_) : sources(lists), size(size_) {
#pragma unroll
    for (int i = 0; i < kCachedPerLane; ++i) {
      const int64_t j = threadIdx.x + 32 * i;
#pragma unroll
      for (int l = 0; l < kLists; ++l) cached[i][l] = j < size ? lists[l][j] : acc_t(0);
    }
  }

  // f(j, values, held) for each of this lane's positions j: values[l] = sources[l][j] as first read; held, a
  // std::bool_constant, says whether the position is held in registers, where what f writes into values stays
  // for the next pass (past them, a pass reads the sources again).
  template <typename F>
  __device__ void for_each(F&& f) {
#pragma unroll
    for (int i = 0; i < kCachedPerLane; ++i) {
      const int64_t j = threadIdx.x + 32 * i;
      if (j < size) f(j, cached[i], std::true_type{});
    }
    for (int64_t j = threadIdx.x + 32 * kCachedPerLane; j < size; j += 32) {
      acc_t values[kLists];
#pragma unroll
      for (int l = 0; l < kLists; ++l) values[l] = sources[l][j];
      f(j, values, std::false_type{});
    }
  }
};

// Softmax over each pixel's positions: the weights (0 at the pixel's own column entry) and the log-sum-exp.
// p = e^(e − max) once a position, held in place of its energy, and the weight p / Σ p; past the held
// positions the weight is recomputed from the energy, e^(e − lse).
template <typename scalar_t, typename acc_t>
__global__ void softmax_kernel(const acc_t* __restrict__ e_row, const acc_t* __restrict__ e_col,
                               scalar_t* __restrict__ a_row, scalar_t* __restrict__ a_col, acc_t* __restrict__ lse,
                               int64_t pixels, int64_t H, int64_t W) {
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kSoftmaxWarps + threadIdx.y;
  if (pixel >= pixels) return;  // the whole warp
  const PixelLists lists = pixel_lists(pixel, H, W);
  const acc_t* const row_lists[1] = {e_row + lists.row};
  const acc_t* const column_lists[1] = {e_col + lists.column};
  LaneLists<acc_t, 1> row(row_lists, W), column(column_lists, H);
  acc_t max = -INFINITY;
  row.for_each([&](int64_t, const acc_t* e, auto) { max = e[0] > max ? e[0] : max; });
  column.for_each([&](int64_t i, const acc_t* e, auto) { max = i != lists.self && e[0] > max ? e[0] : max; });
  max = warp_max(max);
  acc_t sum = 0;
  row.for_each([&](int64_t, acc_t* e, auto) {
    e[0] = exp_difference(e[0], max);
    sum += e[0];
  });
  column.for_each([&](int64_t i, acc_t* e, auto) {
    e[0] = i != lists.self ? exp_difference(e[0], max) : acc_t(0);
    sum += e[0];
  });
  sum = warp_sum(sum);
  const acc_t log_sum = max + log(sum), inverse_sum = 1 / sum;
  if (threadIdx.x == 0) lse[pixel] = log_sum;
  auto weight = [&](const acc_t* x, auto held) {  // x[0]: p where held, else the energy
    if constexpr (decltype(held)::value) return x[0] * inverse_sum;
    else return exp_difference(x[0], log_sum);
  };
  row.for_each([&](int64_t j, const acc_t* x, auto held) {
    a_row[lists.row + j] = static_cast<scalar_t>(weight(x, held));
  });
  column.for_each([&](int64_t i, const acc_t* x, auto held) {
    a_col[lists.column + i] = static_cast<scalar_t>(i != lists.self ? weight(x, held) : acc_t(0));
  });
}

// The weights S again, from the saved log-sum-exp (held in place of the energies by the first pass), and the
// energies' gradients dE = S·(dS − D) with D = Σ S·dS over the pixel's positions (= Σ_c g·out), in the
// inputs' type: the ∂q, ∂k products take them with the copies of q and k (16-bit: on tensor cores, as
// autograd's would). For float dE is written over dS (a lane reads a position before it writes it), hence no
// __restrict__ on either.
template <typename scalar_t, typename acc_t>
__global__ void softmax_backward_kernel(const acc_t* __restrict__ e_row, const acc_t* __restrict__ e_col,
                                        const acc_t* __restrict__ lse, const acc_t* ds_row, const acc_t* ds_col,
                                        scalar_t* de_row, scalar_t* de_col, scalar_t* __restrict__ a_row,
                                        scalar_t* __restrict__ a_col, int64_t pixels, int64_t H, int64_t W) {
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kSoftmaxWarps + threadIdx.y;
  if (pixel >= pixels) return;  // the whole warp
  const PixelLists lists = pixel_lists(pixel, H, W);
  const acc_t* const row_lists[2] = {e_row + lists.row, ds_row + lists.row};  // energy, dS
  const acc_t* const column_lists[2] = {e_col + lists.column, ds_col + lists.column};
  LaneLists<acc_t, 2> row(row_lists, W), column(column_lists, H);
  const acc_t log_sum = lse[pixel];
  auto row_weight = [&](acc_t energy) { return exp_difference(energy, log_sum); };
  auto column_weight = [&](int64_t i, acc_t energy) { return i != lists.self ? row_weight(energy) : acc_t(0); };
  // x = (energy, dS); the first pass leaves S in place of a held energy
  auto hold = [](acc_t* x, acc_t weight, auto held) {
    if constexpr (decltype(held)::value) x[0] = weight;
    return weight;
  };
  acc_t d = 0;
  row.for_each([&](int64_t, acc_t* x, auto held) { d += hold(x, row_weight(x[0]), held) * x[1]; });
  column.for_each([&](int64_t i, acc_t* x, auto held) { d += hold(x, column_weight(i, x[0]), held) * x[1]; });
  d = warp_sum(d);
  row.for_each([&](int64_t j, const acc_t* x, auto held) {
    const acc_t weight = decltype(held)::value ? x[0] : row_weight(x[0]);
    a_row[lists.row + j] = static_cast<scalar_t>(weight);
    de_row[lists.row + j] = static_cast<scalar_t>(energy_grad(weight, x[1], d));
  });
  column.for_each([&](int64_t i, const acc_t* x, auto held) {
    const acc_t weight = decltype(held)::value ? x[0] : column_weight(i, x[0]);
    a_col[lists.column + i] = static_cast<scalar_t>(weight);
    de_col[lists.column + i] = static_cast<scalar_t>(energy_grad(weight, x[1], d));
  });
}

int64_t softmax_blocks(int64_t pixels) { return ceil_div(pixels, kSoftmaxWarps); }

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& v_in) {
  check_attention_inputs(q_in, k_in, v_in, "criss_cross_attention");
  c10::cuda::CUDAGuard guard(q_in.device());
  auto v = v_in.contiguous();
  const int64_t B = v.size(0), H = v.size(2), W = v.size(3);
  const auto acc = at::toOpMathType(v.scalar_type());
  auto out = at::empty_like(v);
  auto lse = at::empty({B, H, W}, v.options().dtype(acc));
  if (B * H * W == 0) return {out, lse};
  const auto e = energies(pixel_major(q_in, k_in));
  const auto a = per_position(B, H, W, v.options());  // the weights
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "criss_cross_attention_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ATTNKERN_LAUNCH(softmax_blocks(B * H * W), dim3(32, kSoftmaxWarps), 0, c10::cuda::getCurrentCUDAStream(),
                    softmax_kernel<scalar_t, acc_t>)(
        e.rows.const_data_ptr<acc_t>(), e.columns.const_data_ptr<acc_t>(), a.rows.mutable_data_ptr<scalar_t>(),
        a.columns.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(), B * H * W, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // Columns: [B·W, Cv, H] products, transposed into out; rows, out[b, :, h, :] += V_h·A_row[b, h]ᵀ: [B·H, Cv, W]
  // products of v's row layout added by that transpose, or a call a sample over v (rows_in_one_call).
  if (rows_in_one_call(v)) {
    auto products = matrices_like(v);
    accumulating_bmm_out(products, row_and_column_matrices(v), transposed(a));
    columns_into(products.columns, out, products.rows);
  } else {
    columns_into(at::bmm(column_matrices(v), a.columns.transpose(1, 2)), out);
    auto a_rows = a.rows.view({B, H, W, W});
    for (int64_t b = 0; b < B; ++b) row_matrices(out, b).baddbmm_(row_matrices(v, b), a_rows[b].transpose(1, 2));
  }
  return {out, lse};
}

// Backward: the energies and the weights' gradients dS = g·v as GEMMs, the softmax backward (the weights S,
// D and dE), then ∂q = dE·K and ∂k = dEᵀ·Q by rows and by columns (pixel-major in the accumulation type, summed
// into the image layout by one kernel), ∂v = G·S by rows and by columns (transposed back). `out` is not needed:
// D = Σ S·dS.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in) {
  check_attention_inputs(q_in, k_in, v_in, "criss_cross_attention_backward");
  check_attention_outputs(grad_in, out_in, lse_in, v_in, "criss_cross_attention_backward");
  c10::cuda::CUDAGuard guard(q_in.device());
  auto v = v_in.contiguous(), g = grad_in.contiguous(), lse = lse_in.contiguous();
  const int64_t B = q_in.size(0), Cq = q_in.size(1), H = q_in.size(2), W = q_in.size(3);
  const auto acc = lse.scalar_type();
  auto grad_q = at::empty_like(q_in, at::MemoryFormat::Contiguous);
  auto grad_k = at::empty_like(k_in, at::MemoryFormat::Contiguous), grad_v = at::empty_like(v);
  if (B * H * W == 0) return {grad_q, grad_k, grad_v};
  const PixelMajor qk = pixel_major(q_in, k_in);
  const auto e = energies(qk);
  // dS[w, w'] = g(h, w)·v(h, w') by rows; dS[h, h'] = g(h, w)·v(h', w) by columns. The row products, here and
  // in ∂v, on the row layouts of g and v written beside their column layouts, or a call a sample where g and v
  // lie, their column layouts then written by one launch (rows_in_one_call).
  const bool rows_copied = rows_in_one_call(v);
  auto ds = per_position(B, H, W, v.options().dtype(acc));
  RowsAndColumns g_matrices;  // rows and columns; the column matrices alone where the rows are a call a sample
  if (rows_copied) {
    g_matrices = row_and_column_matrices(g);
    accumulating_bmm_out(ds, transposed(g_matrices), row_and_column_matrices(v));
  } else {
    auto ds_rows = ds.rows.view({B, H, W, W});
    for (int64_t b = 0; b < B; ++b) {
      auto ds_b = ds_rows[b];
      accumulating_bmm_out(ds_b, row_matrices(g, b).transpose(1, 2), row_matrices(v, b));
    }
    auto g_and_v = column_matrices({g, v});
    g_matrices.columns = g_and_v.narrow(0, 0, B * W);
    accumulating_bmm_out(ds.columns, g_matrices.columns.transpose(1, 2), g_and_v.narrow(0, B * W, B * W));
  }
  const auto de = v.scalar_type() == acc ? ds : per_position(B, H, W, v.options());  // float: dE over dS
  const auto a = per_position(B, H, W, v.options());  // the weights
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "criss_cross_attention_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ATTNKERN_LAUNCH(softmax_blocks(B * H * W), dim3(32, kSoftmaxWarps), 0, c10::cuda::getCurrentCUDAStream(),
                    softmax_backward_kernel<scalar_t, acc_t>)(
        e.rows.const_data_ptr<acc_t>(), e.columns.const_data_ptr<acc_t>(), lse.const_data_ptr<acc_t>(),
        ds.rows.const_data_ptr<acc_t>(), ds.columns.const_data_ptr<acc_t>(), de.rows.mutable_data_ptr<scalar_t>(),
        de.columns.mutable_data_ptr<scalar_t>(), a.rows.mutable_data_ptr<scalar_t>(),
        a.columns.mutable_data_ptr<scalar_t>(), B * H * W, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // ∂v: the columns [B·W, Cv, H] transposed back, and the rows, ∂v[b, :, h, :] += G_h·S_row[b, h], added by it.
  if (rows_copied) {
    auto products = matrices_like(v);
    accumulating_bmm_out(products, g_matrices, a);
    columns_into(products.columns, grad_v, products.rows);
  } else {
    columns_into(at::bmm(g_matrices.columns, a.columns), grad_v);
    auto a_rows = a.rows.view({B, H, W, W});
    for (int64_t b = 0; b < B; ++b) row_matrices(grad_v, b).baddbmm_(row_matrices(g, b), a_rows[b]);
  }
  // ∂q and ∂k, pixel-major in the accumulation type (rows [B·H, W, Cq], columns [B·W, H, Cq]), then summed.
  auto dq = per_pixel(B, H, W, Cq, v.options().dtype(acc)), dk = per_pixel(B, H, W, Cq, v.options().dtype(acc));
  accumulating_bmm_out(dq, de, qk.k);
  accumulating_bmm_out(dk, transposed(de), qk.q);
  pixel_major_sums(dq, dk, grad_q, grad_k);
  return {grad_q, grad_k, grad_v};
}

}  // namespace

ATTNKERN_CUDA_KERNELS(m) {
  m.impl("criss_cross_affinity", &affinity_cuda);
  m.impl("criss_cross_aggregate", &aggregate_cuda<false>);
  m.impl("criss_cross_aggregate_transposed", &aggregate_cuda<true>);
  m.impl("criss_cross_attention", &attention_cuda);
  m.impl("criss_cross_attention_backward", &attention_backward_cuda);
}

}  // namespace criss_cross
}  // namespace attnkern
