// CUDA kernels of the window-attention family.
//
// In fp16 and bf16 on sm_80 and newer, for N ≤ 64 and d ≤ 64: the tensor-core kernels of
// window_attention_mma.cuh (forward) and window_attention_mma_backward.cuh. Elsewhere (float, double,
// larger windows or heads, older devices):
// Forward: one block per (window, head). The block loads its window's q (scaled), k and v into shared
// memory through the index maps of window_attention.h (no partition or roll copies); thread i owns
// query row i: a first pass over the keys gives the row's max and log-sum-exp, a second accumulates
// o_i = Σ_j P_ij·v_j, written straight to image layout.
// Backward: one block per (window group, head), the group's windows one after another. Per window,
// thread i computes row i of dS (recomputed from the saved lse) for dq_i and its row of the bias
// gradient, then thread j column j of dS for dk_j and dv_j. Each block adds into its own slice of a
// [groups, heads, N, N] partial bias gradient; one more launch (sum_bias_partials_kernel, after either
// backward) sums the slices in group order into the bias dtype: deterministic, no atomics.
// Rows in shared memory are d + 1 apart, so threads reading their own rows hit different banks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "window_attention/window_attention.h"
#include "window_attention/window_attention_checks.h"
#include "window_attention/window_attention_mma.cuh"
#include "window_attention/window_attention_mma_backward.cuh"

namespace attnkern {
namespace window_attention {
namespace {

constexpr int kMaxThreads = 256;

int block_threads(int64_t N) { return static_cast<int>(std::min<int64_t>(ceil_div(N, 32) * 32, kMaxThreads)); }

// Shared memory: `arrays` [N, d + 1] accumulator-typed arrays, then N of each per-token scalar
// (acc_t: lse and D), then the tokens' pixels and regions.
template <typename acc_t>
int64_t smem_bytes(int64_t N, int64_t d, int arrays, int scalars) {
  return (arrays * N * (d + 1) + scalars * N) * static_cast<int64_t>(sizeof(acc_t)) +
         N * static_cast<int64_t>(sizeof(int64_t) + sizeof(int));
}

// The dynamic shared memory of a launch of `kernel`: checked against the device's limit, and allowed.
template <typename acc_t, typename Kernel>
int64_t launch_smem(Kernel kernel, int64_t N, int64_t d, int arrays, int scalars, const char* op) {
  const int64_t bytes = smem_bytes<acc_t>(N, d, arrays, scalars);
  TORCH_CHECK(bytes <= max_shared_memory_optin(), op, ": a window of N = ", N, " tokens with head dim ", d, " needs ",
              bytes, " bytes of shared memory per block on CUDA, more than this device's ", max_shared_memory_optin(),
              "; use a smaller window or head dim");
  allow_smem(kernel, bytes);
  return bytes;
}

// Loads q·scale, k, v (and optionally dO) of window w, head h of sample b into [N, d + 1] shared
// arrays, with the tokens' pixels and regions.
template <typename scalar_t, typename acc_t>
__device__ void load_window(const scalar_t* qkv_b, const WindowGrid& grid, int64_t w, int64_t h, int64_t heads,
                            int64_t d, acc_t scale, acc_t* q, acc_t* k, acc_t* v, int64_t* pixel, int* region) {
  const int64_t N = grid.tokens(), ld = d + 1;
  for (int64_t t = threadIdx.x; t < N; t += blockDim.x) {
    pixel[t] = grid.pixel(w, t);
    region[t] = grid.shift > 0 ? grid.region(w, t) : 0;
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < N * d; e += blockDim.x) {  // consecutive threads: consecutive channels
    const int64_t t = e / d, c = e % d;
    q[t * ld + c] = scale * static_cast<acc_t>(qkv_b[qkv_offset(pixel[t], 0, h, heads, d) + c]);
    k[t * ld + c] = static_cast<acc_t>(qkv_b[qkv_offset(pixel[t], 1, h, heads, d) + c]);
    v[t * ld + c] = static_cast<acc_t>(qkv_b[qkv_offset(pixel[t], 2, h, heads, d) + c]);
  }
  __syncthreads();
}

template <typename acc_t>
__device__ acc_t row_dot(const acc_t* a, const acc_t* b, int64_t d) {
  acc_t sum = 0;
  for (int64_t c = 0; c < d; ++c) sum += a[c] * b[c];
  return sum;
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ qkv, const scalar_t* __restrict__ bias,
                               const acc_t* __restrict__ mask, scalar_t* __restrict__ out, acc_t* __restrict__ lse,
                               WindowGrid grid, int64_t heads, int64_t d, acc_t scale) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int64_t N = grid.tokens(), nW = grid.windows(), ld = d + 1, HW = grid.H * grid.W;
  const int64_t h = blockIdx.x % heads, w = (blockIdx.x / heads) % nW, b = blockIdx.x / (heads * nW);
  acc_t* q = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* k = q + N * ld;
  acc_t* v = k + N * ld;
  acc_t* o = v + N * ld;
  int64_t* pixel = reinterpret_cast<int64_t*>(o + N * ld);
  int* region = reinterpret_cast<int*>(pixel + N);
  load_window(qkv + b * HW * 3 * heads * d, grid, w, h, heads, d, scale, q, k, v, pixel, region);
  const scalar_t* bias_h = bias != nullptr ? bias + h * N * N : nullptr;
  const acc_t* mask_w = mask != nullptr ? mask + w * N * N : nullptr;
  const int* regions = grid.shift > 0 ? region : nullptr;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    acc_t max = -INFINITY, sum = 0;
    for (int64_t j = 0; j < N; ++j) {  // online max and sum
      const acc_t s = row_dot(q + i * ld, k + j * ld, d) + logit_offset<acc_t>(bias_h, mask_w, regions, i, j, N);
      if (s > max) {
        sum = sum * exp(max - s) + 1;
        max = s;
      } else if (s != -INFINITY) {  // a −inf logit adds nothing (while max is −inf, exp(s − max) would be NaN)
        sum += exp(s - max);
      }
    }
    const acc_t row_lse = max + log(sum);
    acc_t* o_i = o + i * ld;
    for (int64_t c = 0; c < d; ++c) o_i[c] = 0;
    for (int64_t j = 0; j < N; ++j) {
      const acc_t s = row_dot(q + i * ld, k + j * ld, d) + logit_offset<acc_t>(bias_h, mask_w, regions, i, j, N);
      const acc_t p = exp(s - row_lse);
      for (int64_t c = 0; c < d; ++c) o_i[c] += p * v[j * ld + c];
    }
    lse[(b * HW + pixel[i]) * heads + h] = row_lse;
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < N * d; e += blockDim.x) {
    const int64_t t = e / d, c = e % d;
    out[out_offset(b * HW + pixel[t], h, heads, d) + c] = static_cast<scalar_t>(o[t * ld + c]);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ qkv,
                                const scalar_t* __restrict__ bias, const acc_t* __restrict__ mask,
                                const scalar_t* __restrict__ out, const acc_t* __restrict__ lse,
                                scalar_t* __restrict__ grad_qkv, acc_t* __restrict__ grad_bias_partial, WindowGrid grid,
                                int64_t batch, int64_t heads, int64_t d, acc_t scale, int64_t groups) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int64_t N = grid.tokens(), nW = grid.windows(), ld = d + 1, HW = grid.H * grid.W;
  const int64_t h = blockIdx.x % heads, group = blockIdx.x / heads;
  acc_t* q = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* k = q + N * ld;
  acc_t* v = k + N * ld;
  acc_t* grad_o = v + N * ld;
  acc_t* acc_a = grad_o + N * ld;  // dq in the row pass, dk in the column pass
  acc_t* acc_b = acc_a + N * ld;   // dv in the column pass
  acc_t* lse_w = acc_b + N * ld;
  acc_t* delta = lse_w + N;
  int64_t* pixel = reinterpret_cast<int64_t*>(delta + N);
  int* region = reinterpret_cast<int*>(pixel + N);
  const scalar_t* bias_h = bias != nullptr ? bias + h * N * N : nullptr;
  acc_t* grad_bias_h = grad_bias_partial != nullptr ? grad_bias_partial + (group * heads + h) * N * N : nullptr;
  const int* regions = grid.shift > 0 ? region : nullptr;
  for (int64_t window = group; window < batch * nW; window += groups) {
    const int64_t b = window / nW, w = window % nW;
    const acc_t* mask_w = mask != nullptr ? mask + w * N * N : nullptr;
    load_window(qkv + b * HW * 3 * heads * d, grid, w, h, heads, d, scale, q, k, v, pixel, region);
    for (int64_t e = threadIdx.x; e < N * d; e += blockDim.x) {
      const int64_t t = e / d, c = e % d;
      grad_o[t * ld + c] = static_cast<acc_t>(grad[out_offset(b * HW + pixel[t], h, heads, d) + c]);
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {  // lse_i, and D_i = Σ_c dO_ic·o_ic
      lse_w[i] = lse[(b * HW + pixel[i]) * heads + h];
      const scalar_t* o_i = out + out_offset(b * HW + pixel[i], h, heads, d);
      acc_t sum = 0;
      for (int64_t c = 0; c < d; ++c) sum += grad_o[i * ld + c] * static_cast<acc_t>(o_i[c]);
      delta[i] = sum;
    }
    __syncthreads();
    // dS_ij, recomputed wherever it is needed.
    auto logit_grad_at = [&](int64_t i, int64_t j, acc_t& p) {
      const acc_t s = row_dot(q + i * ld, k + j * ld, d) + logit_offset<acc_t>(bias_h, mask_w, regions, i, j, N);
      p = exp(s - lse_w[i]);
      return logit_grad(p, row_dot(grad_o + i * ld, v + j * ld, d), delta[i]);
    };
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {  // rows: dq_i and the bias gradient
      acc_t* dq = acc_a + i * ld;
      for (int64_t c = 0; c < d; ++c) dq[c] = 0;
      for (int64_t j = 0; j < N; ++j) {
        acc_t p;
        const acc_t ds = logit_grad_at(i, j, p);
        if (grad_bias_h != nullptr) grad_bias_h[i * N + j] += ds;
        for (int64_t c = 0; c < d; ++c) dq[c] += ds * k[j * ld + c];
      }
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < N * d; e += blockDim.x) {
      const int64_t t = e / d, c = e % d;
      grad_qkv[b * HW * 3 * heads * d + qkv_offset(pixel[t], 0, h, heads, d) + c] =
          static_cast<scalar_t>(scale * acc_a[t * ld + c]);
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {  // columns: dk_j, dv_j
      acc_t* dk = acc_a + j * ld;
      acc_t* dv = acc_b + j * ld;
      for (int64_t c = 0; c < d; ++c) dk[c] = dv[c] = 0;
      for (int64_t i = 0; i < N; ++i) {
        acc_t p;
        const acc_t ds = logit_grad_at(i, j, p);
        for (int64_t c = 0; c < d; ++c) {
          dk[c] += ds * q[i * ld + c];  // q is scaled: dk = scale·Σ_i dS_ij·q_i
          dv[c] += p * grad_o[i * ld + c];
        }
      }
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < N * d; e += blockDim.x) {
      const int64_t t = e / d, c = e % d;
      scalar_t* base = grad_qkv + b * HW * 3 * heads * d;
      base[qkv_offset(pixel[t], 1, h, heads, d) + c] = static_cast<scalar_t>(acc_a[t * ld + c]);
      base[qkv_offset(pixel[t], 2, h, heads, d) + c] = static_cast<scalar_t>(acc_b[t * ld + c]);
    }
    __syncthreads();
  }
}

// Launches the tensor-core forward (window_attention_mma.cuh) where it applies; whether it did.
template <typename scalar_t>
bool forward_on_tensor_cores(const at::Tensor& qkv, const at::Tensor& bias, const at::Tensor& mask, at::Tensor& out,
                             at::Tensor& lse, const WindowGrid& grid, double scale) {
  if constexpr (!tensor_core::is_mma_element<scalar_t>) {
    return false;
  } else {
    const int64_t heads = qkv.size(4), d = qkv.size(5), N = grid.tokens();
    if (!mma_fits(N, d) || !has_tensor_core_mma()) return false;
    const int64_t bytes = mma_smem_bytes(N, d);
    allow_smem(mma_forward_kernel<scalar_t>, bytes);
    ATTNKERN_LAUNCH(qkv.size(0) * grid.windows() * heads, mma_round_up16(N) / 16 * 32, bytes,
                    c10::cuda::getCurrentCUDAStream(), mma_forward_kernel<scalar_t>)(
        qkv.const_data_ptr<scalar_t>(), bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
        mask.defined() ? mask.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<scalar_t>(),
        lse.mutable_data_ptr<float>(), grid, static_cast<int>(heads), static_cast<int>(d),
        // a token's rows lie multiples of d past the bases: their alignment is the bases'
        vector_width(d, sizeof(scalar_t), {qkv.const_data_ptr(), out.const_data_ptr()}),
        static_cast<float>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }
}

// The bias gradient: the backward's [groups, heads·N·N] partials summed over the groups in group order
// (deterministic) and rounded once to the bias dtype, in one launch. A block is kSumColumns·32 elements ×
// kSumSlices slices of the groups: thread (x, y) sums groups y, y + kSumSlices, … of elements x + 32·j (a warp
// reads a line of one group for each j: kSumColumns independent loads a step); then thread (x, y < kSumColumns)
// adds the slices' sums of element x + 32·y in slice order. The group loop unrolled by 4: a thread's 2 columns
// of 4 groups in flight at once (384 blocks at SwinIR's 6·64² elements, 113 at Swin-T's 3·49²).
constexpr int kSumSlices = 16, kSumColumns = 2, kSumSpan = 32 * kSumColumns;

template <typename scalar_t, typename acc_t>
__global__ void sum_bias_partials_kernel(const acc_t* __restrict__ partials, scalar_t* __restrict__ grad_bias,
                                         int groups, int elements) {
  __shared__ acc_t sums[kSumSlices][kSumSpan];
  const int first = blockIdx.x * kSumSpan + threadIdx.x;
  acc_t sum[kSumColumns] = {};
#pragma unroll 4
  for (int g = threadIdx.y; g < groups; g += kSumSlices) {
    const acc_t* group = partials + static_cast<int64_t>(g) * elements;
#pragma unroll
    for (int j = 0; j < kSumColumns; ++j) {
      if (first + 32 * j < elements) sum[j] += group[first + 32 * j];
    }
  }
#pragma unroll
  for (int j = 0; j < kSumColumns; ++j) sums[threadIdx.y][threadIdx.x + 32 * j] = sum[j];
  __syncthreads();
  const int local = threadIdx.y * 32 + threadIdx.x, e = blockIdx.x * kSumSpan + local;
  if (local < kSumSpan && e < elements) {
    acc_t total = sums[0][local];
    for (int s = 1; s < kSumSlices; ++s) total += sums[s][local];
    grad_bias[e] = static_cast<scalar_t>(total);
  }
}

template <typename scalar_t, typename acc_t>
at::Tensor sum_bias_partials(const at::Tensor& partials, const at::Tensor& bias) {
  auto grad_bias = at::empty_like(bias);
  const int64_t groups = partials.size(0), elements = bias.numel();
  TORCH_INTERNAL_ASSERT(partials.numel() == groups * elements &&
                        elements <= std::numeric_limits<int>::max() - kSumSpan);  // int offsets in a block
  ATTNKERN_LAUNCH(ceil_div(elements, kSumSpan), dim3(32, kSumSlices), 0, c10::cuda::getCurrentCUDAStream(),
                  sum_bias_partials_kernel<scalar_t, acc_t>)(
      partials.const_data_ptr<acc_t>(), grad_bias.mutable_data_ptr<scalar_t>(), static_cast<int>(groups),
      static_cast<int>(elements));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_bias;
}

// Launches the tensor-core backward (window_attention_mma_backward.cuh) where it applies; whether it did.
// It runs more window groups than the SIMT backward (mma_backward_groups), with partials of its own.
template <typename scalar_t>
bool backward_on_tensor_cores(const at::Tensor& grad, const at::Tensor& qkv, const at::Tensor& bias,
                              const at::Tensor& mask, const at::Tensor& out, const at::Tensor& lse,
                              at::Tensor& grad_qkv, at::Tensor& grad_bias_partial, const WindowGrid& grid,
                              double scale) {
  if constexpr (!tensor_core::is_mma_element<scalar_t>) {
    return false;
  } else {
    const int64_t B = qkv.size(0), heads = qkv.size(4), d = qkv.size(5), N = grid.tokens();
    if (!mma_fits(N, d) || !has_tensor_core_mma()) return false;
    const int64_t bytes = MmaBackwardLayout(N, d, mask.defined()).total;
    if (bytes > max_shared_memory_optin()) return false;
    const int64_t groups = mma_backward_groups(B * grid.windows(), heads,
                                               current_device_attribute(cudaDevAttrMultiProcessorCount));
    if (bias.defined()) grad_bias_partial = at::empty({groups, heads, N, N}, qkv.options().dtype(at::kFloat));
    allow_smem(mma_backward_kernel<scalar_t>, bytes);
    const int vec = vector_width(d, sizeof(scalar_t), {qkv.const_data_ptr(), grad.const_data_ptr(),
                                                        grad_qkv.const_data_ptr(), out.const_data_ptr()});
    ATTNKERN_LAUNCH(groups * heads, mma_round_up16(N) / 16 * 32, bytes, c10::cuda::getCurrentCUDAStream(),
                    mma_backward_kernel<scalar_t>)(
        grad.const_data_ptr<scalar_t>(), qkv.const_data_ptr<scalar_t>(),
        bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
        mask.defined() ? mask.const_data_ptr<float>() : nullptr, out.const_data_ptr<scalar_t>(),
        lse.const_data_ptr<float>(), grad_qkv.mutable_data_ptr<scalar_t>(),
        bias.defined() ? grad_bias_partial.mutable_data_ptr<float>() : nullptr, grid, static_cast<int>(B),
        static_cast<int>(heads), static_cast<int>(d), vec, static_cast<float>(scale), static_cast<int>(groups));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }
}

std::tuple<at::Tensor, at::Tensor> window_attention_cuda(const at::Tensor& qkv_in, const c10::optional<at::Tensor>& bias_in,
                                                         const c10::optional<at::Tensor>& mask_in, int64_t window_size,
                                                         int64_t shift_size, double scale) {
  const Inputs in = forward_inputs(qkv_in, bias_in, mask_in, window_size, shift_size);
  c10::cuda::CUDAGuard guard(qkv_in.device());
  const at::Tensor &qkv = in.qkv, &bias = in.bias, &mask = in.mask;
  const WindowGrid& grid = in.grid;
  const int64_t B = in.B, heads = in.heads, d = in.d, N = grid.tokens();
  auto out = at::empty({B, grid.H, grid.W, heads, d}, qkv.options());
  auto lse = at::empty({B, grid.H, grid.W, heads}, in.acc_options());
  const int64_t blocks = B * grid.windows() * heads;
  if (blocks == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (forward_on_tensor_cores<scalar_t>(qkv, bias, mask, out, lse, grid, scale)) return;
    const int64_t bytes = launch_smem<acc_t>(forward_kernel<scalar_t, acc_t>, N, d, 4, 0, in.op);
    ATTNKERN_LAUNCH(blocks, block_threads(N), bytes, c10::cuda::getCurrentCUDAStream(),
                    forward_kernel<scalar_t, acc_t>)(
        qkv.const_data_ptr<scalar_t>(), bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
        mask.defined() ? mask.const_data_ptr<acc_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
        lse.mutable_data_ptr<acc_t>(), grid, heads, d, static_cast<acc_t>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> window_attention_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& qkv_in, const c10::optional<at::Tensor>& bias_in,
    const c10::optional<at::Tensor>& mask_in, const at::Tensor& out_in, const at::Tensor& lse_in, int64_t window_size,
    int64_t shift_size, double scale) {
  const BackwardInputs in = backward_inputs(grad_in, qkv_in, bias_in, mask_in, out_in, lse_in, window_size, shift_size);
  c10::cuda::CUDAGuard guard(qkv_in.device());
  const at::Tensor &qkv = in.qkv, &bias = in.bias, &mask = in.mask, &grad = in.grad, &out = in.out, &lse = in.lse;
  const WindowGrid& grid = in.grid;
  const int64_t B = in.B, heads = in.heads, d = in.d, N = grid.tokens();
  const int64_t groups = backward_groups(B * grid.windows());
  auto grad_qkv = at::empty_like(qkv);
  at::Tensor grad_bias = !bias.defined() ? at::empty({0}, qkv.options())
                         : groups == 0  ? at::zeros_like(bias)  // no window: no gradient
                                        : at::Tensor();         // the partials' sum, below
  if (groups > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      at::Tensor grad_bias_partial;  // [groups, heads, N, N], the groups of whichever kernel runs
      if (!backward_on_tensor_cores<scalar_t>(grad, qkv, bias, mask, out, lse, grad_qkv, grad_bias_partial, grid,
                                              scale)) {
        if (bias.defined()) grad_bias_partial = at::zeros({groups, heads, N, N}, in.acc_options());
        const int64_t bytes = launch_smem<acc_t>(backward_kernel<scalar_t, acc_t>, N, d, 6, 2, in.op);
        ATTNKERN_LAUNCH(groups * heads, block_threads(N), bytes, c10::cuda::getCurrentCUDAStream(),
                        backward_kernel<scalar_t, acc_t>)(
            grad.const_data_ptr<scalar_t>(), qkv.const_data_ptr<scalar_t>(),
            bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
            mask.defined() ? mask.const_data_ptr<acc_t>() : nullptr, out.const_data_ptr<scalar_t>(),
            lse.const_data_ptr<acc_t>(), grad_qkv.mutable_data_ptr<scalar_t>(),
            bias.defined() ? grad_bias_partial.mutable_data_ptr<acc_t>() : nullptr, grid, B, heads, d,
            static_cast<acc_t>(scale), groups);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (bias.defined()) grad_bias = sum_bias_partials<scalar_t, acc_t>(grad_bias_partial, bias);
    });
  }
  return {grad_qkv, grad_bias};
}

}  // namespace

ATTNKERN_CUDA_KERNELS(m) {
  m.impl("window_attention", &window_attention_cuda);
  m.impl("window_attention_backward", &window_attention_backward_cuda);
}

}  // namespace window_attention
}  // namespace attnkern
