// CUDA kernels of the criss-cross family. Affinity and aggregation: one thread per output element,
// through the shared entry functions of criss_cross.h (consecutive threads take consecutive w, so
// loads along a row coalesce). Fused attention: one block per pixel (below).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cuda_utils.cuh"
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

// ---- fused attention: one block per pixel (forward, ∂q) or per position (∂k, ∂v) ------------------
// A block holds its pixel's P energies/weights in shared memory; nothing [B, P, H, W] is written.

constexpr int kPixelThreads = 128;

// Shared memory of a fused kernel: `arrays` arrays of P weights and the reduction scratch.
template <typename acc_t>
int64_t attention_smem_bytes(int64_t P, int arrays) {
  return (arrays * P + kPixelThreads) * static_cast<int64_t>(sizeof(acc_t));
}

template <typename scalar_t, typename acc_t>
__global__ void attention_forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                         const scalar_t* __restrict__ v, scalar_t* __restrict__ out,
                                         acc_t* __restrict__ lse, int64_t Cq, int64_t Cv, int64_t H, int64_t W) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  acc_t* weights = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t HW = H * W, P = H + W - 1;
  acc_t* scratch = weights + P;
  const int64_t b = blockIdx.x / HW, pixel = blockIdx.x % HW, h = pixel / W, w = pixel % W;
  const scalar_t* qb = q + b * Cq * HW;
  const scalar_t* kb = k + b * Cq * HW;
  const scalar_t* vb = v + b * Cv * HW;
  acc_t local_max = -INFINITY;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    weights[p] = affinity_entry<acc_t>(qb, kb, Cq, H, W, p, h, w);
    local_max = max(local_max, weights[p]);
  }
  const acc_t row_max = block_max(local_max, scratch);
  acc_t local_sum = 0;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    weights[p] = exp(weights[p] - row_max);
    local_sum += weights[p];
  }
  const acc_t sum = block_sum(local_sum, scratch);  // its barriers also publish `weights`
  if (threadIdx.x == 0) lse[blockIdx.x] = row_max + log(sum);
  for (int64_t c = threadIdx.x; c < Cv; c += blockDim.x) {
    acc_t acc = 0;
    for (int64_t p = 0; p < P; ++p) acc += weights[p] * static_cast<acc_t>(vb[c * HW + position_offset(p, h, w, H, W)]);
    out[(b * Cv + c) * HW + pixel] = static_cast<scalar_t>(acc / sum);
  }
}

// ∂q of one pixel: dS_p = s_p·(g·v_p − D), ∂q = Σ_p dS_p·k_p.
template <typename scalar_t, typename acc_t>
__global__ void attention_grad_q_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ q,
                                        const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                        const acc_t* __restrict__ lse, const acc_t* __restrict__ d,
                                        scalar_t* __restrict__ grad_q, int64_t Cq, int64_t Cv, int64_t H, int64_t W) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  acc_t* energy_grads = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t HW = H * W, P = H + W - 1;
  const int64_t b = blockIdx.x / HW, pixel = blockIdx.x % HW, h = pixel / W, w = pixel % W;
  const scalar_t* qb = q + b * Cq * HW;
  const scalar_t* kb = k + b * Cq * HW;
  const scalar_t* vb = v + b * Cv * HW;
  const scalar_t* gb = grad + b * Cv * HW;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    const int64_t source = position_offset(p, h, w, H, W);
    const acc_t weight = attention_weight(affinity_entry<acc_t>(qb, kb, Cq, H, W, p, h, w), lse[blockIdx.x]);
    const acc_t grad_weight = channel_dot<acc_t>(gb, pixel, vb, source, Cv, HW);
    energy_grads[p] = energy_grad(weight, grad_weight, d[blockIdx.x]);
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < Cq; c += blockDim.x) {
    acc_t acc = 0;
    for (int64_t p = 0; p < P; ++p) acc += energy_grads[p] * static_cast<acc_t>(kb[c * HW + position_offset(p, h, w, H, W)]);
    grad_q[(b * Cq + c) * HW + pixel] = static_cast<scalar_t>(acc);
  }
}

// ∂k and ∂v of one position: the pixels whose lists hold it are its own row and column (the same
// P offsets, position_offset(j, y, x)); each contributes dS·q and s·g.
template <typename scalar_t, typename acc_t>
__global__ void attention_grad_kv_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ q,
                                         const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                         const acc_t* __restrict__ lse, const acc_t* __restrict__ d,
                                         scalar_t* __restrict__ grad_k, scalar_t* __restrict__ grad_v, int64_t Cq,
                                         int64_t Cv, int64_t H, int64_t W) {
  ATTNKERN_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int64_t HW = H * W, P = H + W - 1;
  acc_t* weights = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* energy_grads = weights + P;
  const int64_t b = blockIdx.x / HW, position = blockIdx.x % HW, y = position / W, x = position % W;
  const scalar_t* qb = q + b * Cq * HW;
  const scalar_t* kb = k + b * Cq * HW;
  const scalar_t* vb = v + b * Cv * HW;
  const scalar_t* gb = grad + b * Cv * HW;
  for (int64_t j = threadIdx.x; j < P; j += blockDim.x) {
    const int64_t partner = position_offset(j, y, x, H, W);
    const acc_t weight = attention_weight(channel_dot<acc_t>(qb, partner, kb, position, Cq, HW),
                                          lse[b * HW + partner]);
    const acc_t grad_weight = channel_dot<acc_t>(gb, partner, vb, position, Cv, HW);
    weights[j] = weight;
    energy_grads[j] = energy_grad(weight, grad_weight, d[b * HW + partner]);
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < Cq + Cv; c += blockDim.x) {
    const bool is_k = c < Cq;
    const int64_t channel = is_k ? c : c - Cq;
    const scalar_t* source = is_k ? qb + channel * HW : gb + channel * HW;
    const acc_t* coefficient = is_k ? energy_grads : weights;
    acc_t acc = 0;
    for (int64_t j = 0; j < P; ++j) acc += coefficient[j] * static_cast<acc_t>(source[position_offset(j, y, x, H, W)]);
    if (is_k) {
      grad_k[(b * Cq + channel) * HW + position] = static_cast<scalar_t>(acc);
    } else {
      grad_v[(b * Cv + channel) * HW + position] = static_cast<scalar_t>(acc);
    }
  }
}

template <typename acc_t>
void check_positions_fit(int64_t P, int arrays, const char* op) {
  const int64_t bytes = attention_smem_bytes<acc_t>(P, arrays);
  TORCH_CHECK(bytes <= 48 * 1024, op, ": H + W - 1 = ", P, " positions need ", bytes,
              " bytes of shared memory per block on CUDA, more than 48 KiB; use criss_cross_affinity and "
              "criss_cross_aggregate for images this large");
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& v_in) {
  check_attention_inputs(q_in, k_in, v_in, "criss_cross_attention");
  c10::cuda::CUDAGuard guard(q_in.device());
  auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t B = q.size(0), Cq = q.size(1), H = q.size(2), W = q.size(3), Cv = v.size(1), P = H + W - 1;
  auto out = at::empty_like(v);
  auto lse = at::empty({B, H, W}, v.options().dtype(at::toOpMathType(v.scalar_type())));
  if (B * H * W == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "criss_cross_attention_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check_positions_fit<acc_t>(P, 1, "criss_cross_attention");
    ATTNKERN_LAUNCH(B * H * W, kPixelThreads, attention_smem_bytes<acc_t>(P, 1), c10::cuda::getCurrentCUDAStream(),
                    attention_forward_kernel<scalar_t, acc_t>)(
            q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
            out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(), Cq, Cv, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in) {
  check_attention_inputs(q_in, k_in, v_in, "criss_cross_attention_backward");
  check_attention_outputs(grad_in, out_in, lse_in, v_in, "criss_cross_attention_backward");
  c10::cuda::CUDAGuard guard(q_in.device());
  auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), g = grad_in.contiguous();
  auto lse = lse_in.contiguous();
  const int64_t B = q.size(0), Cq = q.size(1), H = q.size(2), W = q.size(3), Cv = v.size(1), P = H + W - 1;
  auto grad_q = at::empty_like(q), grad_k = at::empty_like(k), grad_v = at::empty_like(v);
  if (B * H * W == 0) return {grad_q, grad_k, grad_v};
  auto d = (g.to(lse.scalar_type()) * out_in.to(lse.scalar_type())).sum(1).contiguous();  // D = Σ_c g·out
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "criss_cross_attention_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check_positions_fit<acc_t>(P, 2, "criss_cross_attention_backward");
    ATTNKERN_LAUNCH(B * H * W, kPixelThreads, attention_smem_bytes<acc_t>(P, 1), stream,
                    attention_grad_q_kernel<scalar_t, acc_t>)(
        g.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
        v.const_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t>(), d.const_data_ptr<acc_t>(),
        grad_q.mutable_data_ptr<scalar_t>(), Cq, Cv, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ATTNKERN_LAUNCH(B * H * W, kPixelThreads, attention_smem_bytes<acc_t>(P, 2), stream,
                    attention_grad_kv_kernel<scalar_t, acc_t>)(
        g.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
        v.const_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t>(), d.const_data_ptr<acc_t>(),
        grad_k.mutable_data_ptr<scalar_t>(), grad_v.mutable_data_ptr<scalar_t>(), Cq, Cv, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
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
