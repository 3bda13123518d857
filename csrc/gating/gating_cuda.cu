// CUDA kernels of the gating family. Reductions along a channel plane: one block per (b, c) plane, a
// fixed-order block reduction (block_reduce), or for channel_pool's small planes a warp a plane (shuffles).
// Reductions across channels: blocks of 32 pixels × channel slices (reduce_channels_per_pixel), coalesced
// across the threads of a warp. No atomics: every result has one writer and a fixed summation order, so
// the kernels are deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>

#include "common/cuda_utils.cuh"
#include "common/cuda_vector.cuh"
#include "gating/gating.h"
#include "gating/gating_checks.h"

namespace attnkern {
namespace gating {
namespace {

constexpr int kPlaneThreads = 256;  // threads of a one-block-per-plane kernel (a power of two)

// The walk of a one-block-per-plane backward kernel: term(p) for every position p of the block's plane —
// it writes p's gradient and returns p's part of the plane's sum Σ_p term(p), which goes to *sum_out
// unless sum_out is null (the same for every thread of the block). A fixed summation order (block_sum).
template <typename scalar_t, typename acc_t, typename Term>
__device__ void plane_gradient(int64_t HW, scalar_t* sum_out, Term term) {
  __shared__ acc_t scratch[kPlaneThreads];
  acc_t sum = 0;
  for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) sum += term(p);
  if (sum_out != nullptr) {
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) *sum_out = static_cast<scalar_t>(sum);
  }
}

// ---- channel_pool ----------------------------------------------------------------------------

// Planes of at most kWarpPlaneChunks vector chunks (16 a lane) take a warp each (channel_pool_warp_kernel):
// a block's tree reduction over a plane that small costs more than reading it.
constexpr int64_t kWarpPlaneChunks = 32 * 16;

template <typename acc_t>
struct SumMax {
  acc_t sum, max;
};

template <typename acc_t>
__device__ SumMax<acc_t> fold_sum_max(SumMax<acc_t> acc, acc_t v) {
  return {acc.sum + v, nan_max(v, acc.max)};
}

template <typename acc_t>
__device__ SumMax<acc_t> combine_sum_max(SumMax<acc_t> acc, SumMax<acc_t> other) {
  return {acc.sum + other.sum, nan_max(other.max, acc.max)};
}

template <typename acc_t>
__device__ SumMax<acc_t> empty_sum_max() {
  return {acc_t(0), -std::numeric_limits<acc_t>::infinity()};
}

// One block a plane (larger planes).
template <typename scalar_t, typename acc_t>
__global__ void channel_pool_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ mean,
                                    scalar_t* __restrict__ max, int64_t HW) {
  __shared__ acc_t scratch[kPlaneThreads];
  const int64_t plane = blockIdx.x;
  const scalar_t* row = x + plane * HW;
  SumMax<acc_t> acc = empty_sum_max<acc_t>();
  for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) acc = fold_sum_max(acc, static_cast<acc_t>(row[j]));
  const acc_t sum = block_sum(acc.sum, scratch);
  const acc_t mx = block_reduce(acc.max, scratch, [](acc_t a, acc_t b) { return nan_max(a, b); });
  if (threadIdx.x == 0) {
    mean[plane] = static_cast<scalar_t>(sum / static_cast<acc_t>(HW));
    max[plane] = static_cast<scalar_t>(mx);
  }
}

// One warp a plane (small planes): lanes read the plane in chunks of `vec` elements (vector_width; vec
// divides HW, so a chunk stays in its plane), the lanes' partials combined by shuffles (warp_reduce): no
// shared memory, no barrier.
template <typename scalar_t, typename acc_t>
__global__ void channel_pool_warp_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ mean,
                                         scalar_t* __restrict__ max, int64_t planes, int64_t HW, int vec) {
  constexpr int kMaxVec = 16 / sizeof(scalar_t);
  const int lane = threadIdx.x % 32;
  ATTNKERN_WARP_STRIDE_LOOP(plane, planes) {
    const scalar_t* row = x + plane * HW;
    SumMax<acc_t> acc = empty_sum_max<acc_t>();
    for (int64_t j = lane * int64_t(vec); j < HW; j += 32 * int64_t(vec)) {
      alignas(16) scalar_t values[kMaxVec];  // constant indices below: registers
      copy_elements(values, row + j, vec);
#pragma unroll
      for (int e = 0; e < kMaxVec; ++e) {
        if (e < vec) acc = fold_sum_max(acc, static_cast<acc_t>(values[e]));
      }
    }
    const acc_t sum = warp_sum(acc.sum);
    const acc_t mx = warp_reduce(acc.max, [](acc_t a, acc_t b) { return nan_max(a, b); });
    if (lane == 0) {
      mean[plane] = static_cast<scalar_t>(sum / static_cast<acc_t>(HW));
      max[plane] = static_cast<scalar_t>(mx);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void channel_pool_backward_kernel(const scalar_t* __restrict__ grad_mean,
                                             const scalar_t* __restrict__ grad_max, const scalar_t* __restrict__ x,
                                             const scalar_t* __restrict__ max, scalar_t* __restrict__ grad_x,
                                             int64_t HW) {
  __shared__ int64_t scratch[kPlaneThreads];
  const int64_t plane = blockIdx.x;
  const scalar_t* row = x + plane * HW;
  scalar_t* out = grad_x + plane * HW;
  const acc_t mean_share = grad_mean ? static_cast<acc_t>(grad_mean[plane]) / static_cast<acc_t>(HW) : acc_t(0);
  const acc_t mx = static_cast<acc_t>(max[plane]);
  acc_t share = 0;
  if (grad_max != nullptr) {  // uniform across the block: every thread takes the same branch
    int64_t ties = 0;
    for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) ties += static_cast<acc_t>(row[j]) == mx;
    share = max_share(static_cast<acc_t>(grad_max[plane]), block_sum(ties, scratch));
  }
  for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) {
    out[j] = static_cast<scalar_t>(pool_gradient(mean_share, share, static_cast<acc_t>(row[j]) == mx));
  }
}

std::tuple<at::Tensor, at::Tensor> channel_pool_cuda(const at::Tensor& x_in) {
  const Dims d = check_channel_pool(x_in);
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous();
  auto mean = at::empty({d.B, d.C}, x.options()), max = at::empty({d.B, d.C}, x.options());
  if (d.B * d.C == 0) return {mean, max};
  const int64_t planes = d.B * d.C, HW = d.HW();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int vec = vector_width(HW, sizeof(scalar_t), {x.const_data_ptr()});
    if (ceil_div(HW, vec) <= kWarpPlaneChunks) {
      ATTNKERN_LAUNCH(warp_blocks(planes), kElementThreads, 0, stream,
                      channel_pool_warp_kernel<scalar_t, acc_t>)(
          x.const_data_ptr<scalar_t>(), mean.mutable_data_ptr<scalar_t>(), max.mutable_data_ptr<scalar_t>(), planes,
          HW, vec);
    } else {
      ATTNKERN_LAUNCH(planes, kPlaneThreads, 0, stream, channel_pool_kernel<scalar_t, acc_t>)(
          x.const_data_ptr<scalar_t>(), mean.mutable_data_ptr<scalar_t>(), max.mutable_data_ptr<scalar_t>(), HW);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mean, max};
}

at::Tensor channel_pool_backward_cuda(const std::optional<at::Tensor>& grad_mean_in,
                                      const std::optional<at::Tensor>& grad_max_in, const at::Tensor& x_in,
                                      const at::Tensor& max_in) {
  const Dims d = check_channel_pool_backward(grad_mean_in, grad_max_in, x_in, max_in);
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous(), max = max_in.contiguous();
  auto grad_mean = contiguous(grad_mean_in), grad_max = contiguous(grad_max_in);
  auto grad_x = at::empty_like(x);
  if (x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ATTNKERN_LAUNCH(d.B * d.C, kPlaneThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    channel_pool_backward_kernel<scalar_t, acc_t>)(
        optional_ptr<scalar_t>(grad_mean), optional_ptr<scalar_t>(grad_max), x.const_data_ptr<scalar_t>(),
        max.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), d.HW());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

// ---- spatial_pool ----------------------------------------------------------------------------

// The kernels that reduce over channels per pixel: blocks of kPixelLanes pixels (lanes: consecutive
// pixels, so every load is coalesced) × channel_slices(C) slices.
constexpr int kPixelLanes = 32, kMinChannelSlices = 8, kMaxChannelSlices = 32, kChannelsPerThread = 16;

// Slices a block: enough that a thread folds at most kChannelsPerThread channels, 8 to 32 of them (blocks of
// 256 to 1024 threads). A thread's channels form one chain of dependent loads and folds: with few pixels
// (8×20×20 = 100 blocks) the chains' length is the kernel's time, so many channels take many slices.
inline int channel_slices(int64_t C) {
  int slices = kMinChannelSlices;
  while (slices < kMaxChannelSlices && slices * int64_t(kChannelsPerThread) < C) slices *= 2;
  return slices;
}

// Blocks for `pixels`: one per kPixelLanes pixels, capped as the grid-stride kernels' grids are.
inline int64_t pixel_blocks(int64_t pixels) { return capped_blocks(ceil_div(pixels, kPixelLanes)); }

inline dim3 pixel_block_shape(int64_t C) { return dim3(kPixelLanes, channel_slices(C)); }

// For every pixel idx = b·HW + p of the block's walk: thread (x, y) folds channels y, y + blockDim.y, … of
// pixel x into `init` with fold(acc, b, p, c); the first slice combines the slices' partials in order
// with combine(acc, partial) and calls finish(idx, b, p, acc). Deterministic: a fixed order everywhere.
template <typename T, typename Fold, typename Combine, typename Finish>
__device__ void reduce_channels_per_pixel(int64_t total, int64_t HW, int64_t C, T init, Fold fold, Combine combine,
                                          Finish finish) {
  __shared__ T partials[kMaxChannelSlices][kPixelLanes];
  // A grid-stride walk a block at a time (the barriers need every thread of the block in every step).
  for (int64_t base = blockIdx.x * int64_t(kPixelLanes); base < total; base += int64_t(gridDim.x) * kPixelLanes) {
    const int64_t idx = base + threadIdx.x, b = idx / HW, p = idx % HW;
    T acc = init;
    if (idx < total) {
      for (int64_t c = threadIdx.y; c < C; c += blockDim.y) acc = fold(acc, b, p, c);
    }
    partials[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && idx < total) {
      for (int s = 1; s < static_cast<int>(blockDim.y); ++s) acc = combine(acc, partials[s][threadIdx.x]);
      finish(idx, b, p, acc);
    }
    __syncthreads();
  }
}

template <typename scalar_t, typename acc_t>
__global__ void spatial_pool_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gate,
                                    scalar_t* __restrict__ pooled, int64_t C, int64_t HW, int64_t total) {
  reduce_channels_per_pixel(
      total, HW, C, empty_sum_max<acc_t>(),
      [&](SumMax<acc_t> acc, int64_t b, int64_t p, int64_t c) {
        const acc_t g = gate ? static_cast<acc_t>(gate[b * C + c]) : acc_t(1);
        return fold_sum_max(acc, gated(x[(b * C + c) * HW + p], g));
      },
      [](SumMax<acc_t> acc, SumMax<acc_t> other) { return combine_sum_max(acc, other); },
      [&](int64_t, int64_t b, int64_t p, SumMax<acc_t> acc) {
        pooled[b * 2 * HW + p] = static_cast<scalar_t>(acc.sum / static_cast<acc_t>(C));
        pooled[b * 2 * HW + HW + p] = static_cast<scalar_t>(acc.max);
      });
}

// Per pixel, the mean's share grad_mean / C and the max's share grad_max / ties: weights [B, 2, HW].
template <typename scalar_t, typename acc_t>
__global__ void spatial_pool_weights_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                            const scalar_t* __restrict__ gate, const scalar_t* __restrict__ pooled,
                                            acc_t* __restrict__ weights, int64_t C, int64_t HW, int64_t total) {
  reduce_channels_per_pixel(
      total, HW, C, int64_t(0),
      [&](int64_t ties, int64_t b, int64_t p, int64_t c) {
        const acc_t g = gate ? static_cast<acc_t>(gate[b * C + c]) : acc_t(1);
        return ties + (gated(x[(b * C + c) * HW + p], g) == static_cast<acc_t>(pooled[b * 2 * HW + HW + p]));
      },
      [](int64_t ties, int64_t other) { return ties + other; },
      [&](int64_t, int64_t b, int64_t p, int64_t ties) {
        weights[b * 2 * HW + p] = static_cast<acc_t>(grad[b * 2 * HW + p]) / static_cast<acc_t>(C);
        weights[b * 2 * HW + HW + p] = max_share(static_cast<acc_t>(grad[b * 2 * HW + HW + p]), ties);
      });
}

// One block per (b, c) plane: grad_x = g·w and, with a gate, grad_gate = Σ_p x·w.
template <typename scalar_t, typename acc_t>
__global__ void spatial_pool_grad_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gate,
                                         const scalar_t* __restrict__ pooled, const acc_t* __restrict__ weights,
                                         scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_gate, int64_t C,
                                         int64_t HW) {
  const int64_t plane = blockIdx.x, b = plane / C;
  const scalar_t* row = x + plane * HW;
  const scalar_t* mx = pooled + b * 2 * HW + HW;
  const acc_t* mean_share = weights + b * 2 * HW;
  const acc_t* share = mean_share + HW;
  const acc_t g = gate ? static_cast<acc_t>(gate[plane]) : acc_t(1);
  plane_gradient<scalar_t, acc_t>(HW, grad_gate ? grad_gate + plane : nullptr, [&](int64_t p) {
    const acc_t w = pool_gradient(mean_share[p], share[p], gated(row[p], g) == static_cast<acc_t>(mx[p]));
    grad_x[plane * HW + p] = static_cast<scalar_t>(g * w);
    return static_cast<acc_t>(row[p]) * w;
  });
}

at::Tensor spatial_pool_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& gate_in) {
  const Dims d = check_spatial_pool(x_in, gate_in, "spatial_pool");
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous();
  auto gate = contiguous(gate_in);
  auto pooled = at::empty({d.B, 2, d.H, d.W}, x.options());
  const int64_t total = d.B * d.HW();
  if (total == 0) return pooled;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spatial_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ATTNKERN_LAUNCH(pixel_blocks(total), pixel_block_shape(d.C), 0, c10::cuda::getCurrentCUDAStream(),
                    spatial_pool_kernel<scalar_t, acc_t>)(
        x.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(gate), pooled.mutable_data_ptr<scalar_t>(), d.C, d.HW(),
        total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return pooled;
}

std::tuple<at::Tensor, at::Tensor> spatial_pool_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                              const std::optional<at::Tensor>& gate_in,
                                                              const at::Tensor& pooled_in) {
  const Dims d = check_spatial_pool_backward(grad_in, x_in, gate_in, pooled_in);
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous(), grad = grad_in.contiguous(), pooled = pooled_in.contiguous();
  auto gate = contiguous(gate_in);
  auto grad_x = at::empty_like(x);
  auto grad_gate = empty_gradient(gate, x);
  const int64_t pixels = d.B * d.HW();
  if (x.numel() == 0) {
    if (gate.has_value()) grad_gate.zero_();  // a gate over no pixels gets no gradient
    return {grad_x, grad_gate};
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spatial_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto weights = at::empty({d.B, 2, d.HW()}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    ATTNKERN_LAUNCH(pixel_blocks(pixels), pixel_block_shape(d.C), 0, stream,
                    spatial_pool_weights_kernel<scalar_t, acc_t>)(
        grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(gate),
        pooled.const_data_ptr<scalar_t>(), weights.mutable_data_ptr<acc_t>(), d.C, d.HW(), pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ATTNKERN_LAUNCH(d.B * d.C, kPlaneThreads, 0, stream, spatial_pool_grad_kernel<scalar_t, acc_t>)(
        x.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(gate), pooled.const_data_ptr<scalar_t>(),
        weights.const_data_ptr<acc_t>(), grad_x.mutable_data_ptr<scalar_t>(),
        gate.has_value() ? grad_gate.mutable_data_ptr<scalar_t>() : nullptr, d.C, d.HW());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_gate};
}

// ---- apply_gates -----------------------------------------------------------------------------

// A grid-stride loop over chunks of `vec` elements (vec divides HW: a chunk stays in its (b, c) plane), each
// copied in one access (vector_width: up to 16 bytes), its plane and pixel found once a chunk.
template <typename scalar_t, typename acc_t>
__global__ void apply_gates_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ cg,
                                   const scalar_t* __restrict__ pg, scalar_t* __restrict__ out, int64_t C, int64_t HW,
                                   int64_t total, int vec) {
  ATTNKERN_GRID_STRIDE_LOOP(chunk, total / vec) {
    const int64_t idx = chunk * vec, plane = idx / HW, p = idx % HW;  // idx = (b·C + c)·HW + p
    const acc_t channel_gate = cg ? static_cast<acc_t>(cg[plane]) : acc_t(1);
    constexpr int kMaxVec = 16 / sizeof(scalar_t);
    alignas(16) scalar_t values[kMaxVec], pixel_gates[kMaxVec];  // constant indices below: registers
    copy_elements(values, x + idx, vec);
    if (pg) copy_elements(pixel_gates, pg + (plane / C) * HW + p, vec);
#pragma unroll
    for (int e = 0; e < kMaxVec; ++e) {
      if (e < vec) {
        acc_t v = static_cast<acc_t>(values[e]) * channel_gate;
        if (pg) v *= static_cast<acc_t>(pixel_gates[e]);
        values[e] = static_cast<scalar_t>(v);
      }
    }
    copy_elements(out + idx, values, vec);
  }
}

// One block per (b, c) plane: grad_x = grad·cg·pg and, with a channel gate, Σ_p grad·x·pg.
template <typename scalar_t, typename acc_t>
__global__ void apply_gates_plane_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                              const scalar_t* __restrict__ cg, const scalar_t* __restrict__ pg,
                                              scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_cg, int64_t C,
                                              int64_t HW) {
  const int64_t plane = blockIdx.x;
  const scalar_t* p_gate = pg ? pg + (plane / C) * HW : nullptr;
  const acc_t g = cg ? static_cast<acc_t>(cg[plane]) : acc_t(1);
  plane_gradient<scalar_t, acc_t>(HW, grad_cg ? grad_cg + plane : nullptr, [&](int64_t p) {
    const acc_t pgate = p_gate ? static_cast<acc_t>(p_gate[p]) : acc_t(1);
    const acc_t dy = static_cast<acc_t>(grad[plane * HW + p]);
    grad_x[plane * HW + p] = static_cast<scalar_t>(dy * g * pgate);
    return dy * static_cast<acc_t>(x[plane * HW + p]) * pgate;
  });
}

// One thread per pixel: the pixel gate's gradient Σ_c grad·x·cg.
template <typename scalar_t, typename acc_t>
__global__ void apply_gates_pixel_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                              const scalar_t* __restrict__ cg, scalar_t* __restrict__ grad_pg,
                                              int64_t C, int64_t HW, int64_t total) {
  reduce_channels_per_pixel(
      total, HW, C, acc_t(0),
      [&](acc_t sum, int64_t b, int64_t p, int64_t c) {
        const int64_t offset = (b * C + c) * HW + p;
        const acc_t g = cg ? static_cast<acc_t>(cg[b * C + c]) : acc_t(1);
        return sum + static_cast<acc_t>(grad[offset]) * static_cast<acc_t>(x[offset]) * g;
      },
      [](acc_t sum, acc_t other) { return sum + other; },
      [&](int64_t idx, int64_t, int64_t, acc_t sum) { grad_pg[idx] = static_cast<scalar_t>(sum); });
}

at::Tensor apply_gates_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& cg_in,
                            const std::optional<at::Tensor>& pg_in) {
  const Dims d = check_apply_gates(x_in, cg_in, pg_in, "apply_gates");
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous();
  auto cg = contiguous(cg_in), pg = contiguous(pg_in);
  auto out = at::empty_like(x);
  const int64_t total = x.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "apply_gates_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int vec = vector_width(d.HW(), sizeof(scalar_t),
                                 {x.const_data_ptr(), out.const_data_ptr(), pg ? pg->const_data_ptr() : nullptr});
    ATTNKERN_LAUNCH(element_blocks(total / vec), kElementThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    apply_gates_kernel<scalar_t, acc_t>)(
        x.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(cg), optional_ptr<scalar_t>(pg),
        out.mutable_data_ptr<scalar_t>(), d.C, d.HW(), total, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> apply_gates_backward_cuda(const at::Tensor& grad_in,
                                                                         const at::Tensor& x_in,
                                                                         const std::optional<at::Tensor>& cg_in,
                                                                         const std::optional<at::Tensor>& pg_in) {
  const Dims d = check_apply_gates_backward(grad_in, x_in, cg_in, pg_in);
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous(), grad = grad_in.contiguous();
  auto cg = contiguous(cg_in), pg = contiguous(pg_in);
  auto grad_x = at::empty_like(x);
  auto grad_cg = empty_gradient(cg, x), grad_pg = empty_gradient(pg, x);
  if (x.numel() == 0) {  // gates over no elements get no gradient
    grad_cg.zero_();
    grad_pg.zero_();
    return {grad_x, grad_cg, grad_pg};
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "apply_gates_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ATTNKERN_LAUNCH(d.B * d.C, kPlaneThreads, 0, stream, apply_gates_plane_grad_kernel<scalar_t, acc_t>)(
        grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(cg),
        optional_ptr<scalar_t>(pg), grad_x.mutable_data_ptr<scalar_t>(),
        cg.has_value() ? grad_cg.mutable_data_ptr<scalar_t>() : nullptr, d.C, d.HW());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (pg.has_value()) {
      const int64_t pixels = d.B * d.HW();
      ATTNKERN_LAUNCH(pixel_blocks(pixels), pixel_block_shape(d.C), 0, stream,
                      apply_gates_pixel_grad_kernel<scalar_t, acc_t>)(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(cg),
          grad_pg.mutable_data_ptr<scalar_t>(), d.C, d.HW(), pixels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_cg, grad_pg};
}

// ---- group_enhance -----------------------------------------------------------------------------
// One block per (sample, group), its threads walking the group's positions p (consecutive threads,
// consecutive positions: every load of a channel row is coalesced) and its warps the channel means. The
// similarities s (and, backward, t and ∂s) go through a global workspace of one float a position, each
// element written and read by the same thread; the group's values are re-read from the L2 each pass.

constexpr int kGroupThreads = 256;  // a power of two (block_sum)

// out[c] = Σ_p term(c, p) / n for the group's m channels, a warp a channel (its lanes stride the positions,
// their partials summed by shuffles), then a barrier: every thread of the block may read out after it.
template <typename acc_t, typename Term>
__device__ void channel_means(int64_t m, int64_t n, acc_t* __restrict__ out, Term term) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t c = warp; c < m; c += blockDim.x / 32) {
    acc_t sum = 0;
    for (int64_t p = lane; p < n; p += 32) sum += term(c, p);
    sum = warp_sum(sum);
    if (lane == 0) out[c] = sum / static_cast<acc_t>(n);
  }
  __syncthreads();
}

// The group's channel means (into mean[c]) and similarities (into s), and their normalisation; every thread
// of the block gets it.
template <typename scalar_t, typename acc_t>
__device__ GroupNorm<acc_t> group_similarity(const scalar_t* __restrict__ x, int64_t m, int64_t n,
                                             acc_t* __restrict__ mean, acc_t* __restrict__ s, acc_t* scratch) {
  channel_means(m, n, mean, [&](int64_t c, int64_t p) { return static_cast<acc_t>(x[c * n + p]); });
  acc_t sum = 0;
  for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
    acc_t similarity = 0;
    for (int64_t c = 0; c < m; ++c) similarity += static_cast<acc_t>(x[c * n + p]) * mean[c];
    s[p] = similarity;
    sum += similarity;
  }
  sum = block_sum(sum, scratch);
  const acc_t mu = sum / static_cast<acc_t>(n);
  acc_t squares = 0;
  for (int64_t p = threadIdx.x; p < n; p += blockDim.x) squares += (s[p] - mu) * (s[p] - mu);
  return GroupNorm<acc_t>::of(sum, block_sum(squares, scratch), n);
}

template <typename scalar_t, typename acc_t>
__global__ void group_enhance_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                                     const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                                     acc_t* __restrict__ mean_ws, acc_t* __restrict__ s_ws, int64_t G, int64_t m,
                                     int64_t n) {
  __shared__ acc_t scratch[kGroupThreads];
  const int64_t group = blockIdx.x, g = group % G;
  const scalar_t* xg = x + group * m * n;
  acc_t* mean = mean_ws + group * m;
  acc_t* s = s_ws + group * n;
  const auto norm = group_similarity(xg, m, n, mean, s, scratch);
  const acc_t w = static_cast<acc_t>(weight[g]), b = static_cast<acc_t>(bias[g]);
  for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
    const acc_t gate = sigmoid(w * norm.normalised(s[p]) + b);
    for (int64_t c = 0; c < m; ++c) {
      out[group * m * n + c * n + p] = static_cast<scalar_t>(static_cast<acc_t>(xg[c * n + p]) * gate);
    }
  }
}

// Per (sample, group): Σ_p t·ĉ and Σ_p t into weight_partial and bias_partial ([B·G], summed over the samples
// by the host), and ∂x. The workspace holds s, then t and ∂s (t_ws), and the means and their gradients.
template <typename scalar_t, typename acc_t>
__global__ void group_enhance_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                              const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
                                              scalar_t* __restrict__ grad_x, acc_t* __restrict__ weight_partial,
                                              acc_t* __restrict__ bias_partial, acc_t* __restrict__ mean_ws,
                                              acc_t* __restrict__ s_ws, acc_t* __restrict__ t_ws, int64_t G,
                                              int64_t m, int64_t n) {
  __shared__ acc_t scratch[kGroupThreads];
  const int64_t group = blockIdx.x, g = group % G, offset = group * m * n;
  const scalar_t* xg = x + offset;
  const scalar_t* dy = grad + offset;
  acc_t* mean = mean_ws + group * 2 * m;
  acc_t* mean_grad = mean + m;
  acc_t* s = s_ws + group * n;
  acc_t* t = t_ws + group * n;
  const auto norm = group_similarity(xg, m, n, mean, s, scratch);
  const acc_t w = static_cast<acc_t>(weight[g]), b = static_cast<acc_t>(bias[g]);
  acc_t sum_t = 0, sum_tc = 0;
  for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
    const acc_t c_hat = norm.normalised(s[p]), gate = sigmoid(w * c_hat + b);
    acc_t u = 0;
    for (int64_t c = 0; c < m; ++c) u += static_cast<acc_t>(dy[c * n + p]) * static_cast<acc_t>(xg[c * n + p]);
    t[p] = u * gate * (acc_t(1) - gate);
    sum_t += t[p];
    sum_tc += t[p] * c_hat;
  }
  sum_t = block_sum(sum_t, scratch);
  sum_tc = block_sum(sum_tc, scratch);
  if (threadIdx.x == 0) {
    weight_partial[group] = sum_tc;
    bias_partial[group] = sum_t;
  }
  const auto similarity_grad = SimilarityGrad<acc_t>::of(norm, w, sum_t, sum_tc, n);
  for (int64_t p = threadIdx.x; p < n; p += blockDim.x) t[p] = similarity_grad(t[p], norm.normalised(s[p]));
  __syncthreads();
  channel_means(m, n, mean_grad, [&](int64_t c, int64_t p) { return t[p] * static_cast<acc_t>(xg[c * n + p]); });
  for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
    const acc_t gate = sigmoid(w * norm.normalised(s[p]) + b);
    for (int64_t c = 0; c < m; ++c) {
      grad_x[offset + c * n + p] =
          static_cast<scalar_t>(static_cast<acc_t>(dy[c * n + p]) * gate + t[p] * mean[c] + mean_grad[c]);
    }
  }
}

at::Tensor group_enhance_cuda(const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
                              int64_t groups) {
  const GroupDims d = check_group_enhance(x_in, weight_in, bias_in, groups, "group_enhance");
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous(), weight = weight_in.contiguous(), bias = bias_in.contiguous();
  auto out = at::empty_like(x);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_enhance_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    auto means = at::empty({d.B * d.C}, acc), similarities = at::empty({d.B * d.G * d.HW()}, acc);
    ATTNKERN_LAUNCH(d.B * d.G, kGroupThreads, 0, c10::cuda::getCurrentCUDAStream(),
                    group_enhance_kernel<scalar_t, acc_t>)(
        x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), means.mutable_data_ptr<acc_t>(), similarities.mutable_data_ptr<acc_t>(),
        d.G, d.group_channels(), d.HW());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_enhance_backward_cuda(const at::Tensor& grad_in,
                                                                           const at::Tensor& x_in,
                                                                           const at::Tensor& weight_in,
                                                                           const at::Tensor& bias_in, int64_t groups) {
  const GroupDims d = check_group_enhance_backward(grad_in, x_in, weight_in, bias_in, groups);
  c10::cuda::CUDAGuard device_guard(x_in.device());
  auto x = x_in.contiguous(), grad = grad_in.contiguous();
  auto weight = weight_in.contiguous(), bias = bias_in.contiguous();
  auto grad_x = at::empty_like(x);
  at::Tensor grad_weight, grad_bias;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_enhance_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    auto partials = at::zeros({2, d.B * d.G}, acc);  // zeros: an empty group sums nothing
    if (x.numel() > 0) {
      auto means = at::empty({d.B * d.C * 2}, acc);
      auto similarities = at::empty({2, d.B * d.G * d.HW()}, acc);
      ATTNKERN_LAUNCH(d.B * d.G, kGroupThreads, 0, c10::cuda::getCurrentCUDAStream(),
                      group_enhance_backward_kernel<scalar_t, acc_t>)(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
          bias.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), partials[0].mutable_data_ptr<acc_t>(),
          partials[1].mutable_data_ptr<acc_t>(), means.mutable_data_ptr<acc_t>(),
          similarities[0].mutable_data_ptr<acc_t>(), similarities[1].mutable_data_ptr<acc_t>(), d.G,
          d.group_channels(), d.HW());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // Over the samples (ATen's reduction, deterministic), rounded once into x's dtype.
    const auto sums = partials.view({2, d.B, d.G}).sum(1).to(x.scalar_type());
    grad_weight = sums[0];
    grad_bias = sums[1];
  });
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

ATTNKERN_CUDA_KERNELS(m) {
  m.impl("channel_pool", &channel_pool_cuda);
  m.impl("channel_pool_backward", &channel_pool_backward_cuda);
  m.impl("spatial_pool", &spatial_pool_cuda);
  m.impl("spatial_pool_backward", &spatial_pool_backward_cuda);
  m.impl("apply_gates", &apply_gates_cuda);
  m.impl("apply_gates_backward", &apply_gates_backward_cuda);
  m.impl("group_enhance", &group_enhance_cuda);
  m.impl("group_enhance_backward", &group_enhance_backward_cuda);
}

}  // namespace gating
}  // namespace attnkern
