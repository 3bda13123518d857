// CPU kernels of the window-attention family: argument checks, operands and threads here; the
// kernels themselves (window_attention_cpu_kernel.h) are compiled once per CPU capability and the
// version of the capability in use runs (common/cpu_capability.h). The forward runs one task per
// window; the backward one per window group, each accumulating its own partial bias gradient, summed
// in a fixed order afterwards (deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/macros.h"
#include "window_attention/window_attention.h"
#include "window_attention/window_attention_checks.h"

namespace attnkern {
namespace window_attention {

// Everything the kernels read: the tensors of the call as pointers (qkv and bias contiguous, mask
// contiguous in the accumulation type; bias and mask null when absent).
template <typename scalar_t, typename acc_t>
struct Operands {
  WindowGrid grid;
  int64_t batch, heads, d;
  acc_t scale;
  const scalar_t* qkv;   // [B, H, W, 3, heads, d]
  const scalar_t* bias;  // [heads, N, N]
  const acc_t* mask;     // [nW, N, N]

  int64_t sample_stride() const { return grid.H * grid.W * 3 * heads * d; }
};

}  // namespace window_attention
}  // namespace attnkern

#define ATTNKERN_CPU_KERNEL_BODY "window_attention/window_attention_cpu_kernel.h"
#include "common/cpu_foreach_capability.h"

namespace attnkern {
namespace window_attention {
namespace {

template <typename scalar_t, typename acc_t>
Operands<scalar_t, acc_t> operands(const Inputs& in, double scale) {
  return {in.grid,
          in.B,
          in.heads,
          in.d,
          static_cast<acc_t>(scale),
          in.qkv.const_data_ptr<scalar_t>(),
          in.bias.defined() ? in.bias.const_data_ptr<scalar_t>() : nullptr,
          in.mask.defined() ? in.mask.const_data_ptr<acc_t>() : nullptr};
}

std::tuple<at::Tensor, at::Tensor> window_attention_cpu(const at::Tensor& qkv_in, const c10::optional<at::Tensor>& bias,
                                                        const c10::optional<at::Tensor>& mask, int64_t window_size,
                                                        int64_t shift_size, double scale) {
  const Inputs in = forward_inputs(qkv_in, bias, mask, window_size, shift_size);
  const WindowGrid& grid = in.grid;
  const int64_t B = in.B, nW = grid.windows();
  auto out = at::empty({B, grid.H, grid.W, in.heads, in.d}, in.qkv.options());
  auto lse = at::empty({B, grid.H, grid.W, in.heads}, in.acc_options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.qkv.scalar_type(), "window_attention_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto op = operands<scalar_t, acc_t>(in, scale);
    const auto kernel = ATTNKERN_CPU_DISPATCH(forward_windows<scalar_t, acc_t>);
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    acc_t* lse_ptr = lse.mutable_data_ptr<acc_t>();
    at::parallel_for(0, B * nW, 1, [&](int64_t begin, int64_t end) { kernel(op, begin, end, out_ptr, lse_ptr); });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> window_attention_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& qkv_in, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& mask, const at::Tensor& out_in, const at::Tensor& lse_in, int64_t window_size,
    int64_t shift_size, double scale) {
  const BackwardInputs in = backward_inputs(grad_in, qkv_in, bias, mask, out_in, lse_in, window_size, shift_size);
  const at::Tensor &qkv = in.qkv, &grad = in.grad, &out = in.out, &lse = in.lse;
  const int64_t heads = in.heads, N = in.grid.tokens();
  const int64_t groups = backward_groups(in.B * in.grid.windows());
  auto grad_qkv = at::empty_like(qkv);
  // Partial bias gradients, one per (group, head), summed in a fixed order.
  auto grad_bias_partial = in.bias.defined() ? at::zeros({groups, heads, N, N}, in.acc_options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto op = operands<scalar_t, acc_t>(in, scale);
    const auto kernel = ATTNKERN_CPU_DISPATCH(backward_windows<scalar_t, acc_t>);
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t group = begin; group < end; ++group) {
        acc_t* partial =
            grad_bias_partial.defined() ? grad_bias_partial.mutable_data_ptr<acc_t>() + group * heads * N * N : nullptr;
        kernel(op, group, groups, grad.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
               lse.const_data_ptr<acc_t>(), grad_qkv.mutable_data_ptr<scalar_t>(), partial);
      }
    });
  });
  auto grad_bias = grad_bias_partial.defined() ? grad_bias_partial.sum(0).to(bias->scalar_type())
                                               : at::empty({0}, qkv.options());
  return {grad_qkv, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CPU, m) {
  m.impl("window_attention", &window_attention_cpu);
  m.impl("window_attention_backward", &window_attention_backward_cpu);
}

}  // namespace window_attention
}  // namespace attnkern
