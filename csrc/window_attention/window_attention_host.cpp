// Argument checks and operand preparation of the window-attention family, shared by the CPU and
// CUDA kernels.
#include "window_attention/window_attention.h"
#include "window_attention/window_attention_checks.h"

#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <string>

#include "common/checks.h"

namespace attnkern {
namespace window_attention {
namespace {

WindowGrid check_inputs(const at::Tensor& qkv, const c10::optional<at::Tensor>& bias,
                        const c10::optional<at::Tensor>& mask, int64_t window_size, int64_t shift_size,
                        const char* op) {
  const std::string prefix = std::string(op) + ": ";
  check_rank(qkv, (prefix + "qkv").c_str(), 6, "[B, H, W, 3, heads, d]");
  check_floating(qkv, (prefix + "qkv").c_str());
  TORCH_CHECK_VALUE(qkv.size(3) == 3, prefix, "qkv must hold q, k and v in dim 3 ([B, H, W, 3, heads, d]), got shape ",
                    shape_str(qkv));
  TORCH_CHECK_VALUE(qkv.size(4) >= 1 && qkv.size(5) >= 1, prefix,
                    "qkv must have at least one head (heads >= 1) of at least one channel (d >= 1), got shape ",
                    shape_str(qkv));
  TORCH_CHECK_VALUE(window_size >= 1, prefix, "window_size must be >= 1, got ", window_size);
  // N = window_size² tokens per window, and the N×N attention matrix of a window (bias, mask, the kernels).
  const std::string window = prefix + "window_size " + std::to_string(window_size) + ": ";
  const int64_t N = checked_mul(window_size, window_size, (window + "the tokens per window N").c_str());
  checked_mul(N, N, (window + "a window's N×N attention matrix").c_str());
  TORCH_CHECK_VALUE(shift_size >= 0 && shift_size < window_size, prefix,
                    "shift_size must be in [0, window_size) = [0, ", window_size, "), got ", shift_size);
  const int64_t H = qkv.size(1), W = qkv.size(2), heads = qkv.size(4);
  TORCH_CHECK_VALUE(H % window_size == 0 && W % window_size == 0, prefix,
                    "qkv's H and W must be multiples of window_size ", window_size, ", got H = ", H, ", W = ", W,
                    " (pad the image first)");
  const WindowGrid grid{H, W, window_size, shift_size};
  if (bias.has_value()) {
    check_shape(*bias, (prefix + "bias").c_str(), {heads, N, N}, "[heads, N, N]");
    check_same_dtype(*bias, (prefix + "bias").c_str(), qkv, "qkv");
    check_same_device(*bias, (prefix + "bias").c_str(), qkv, "qkv");
  }
  if (mask.has_value()) {
    check_shape(*mask, (prefix + "mask").c_str(), {grid.windows(), N, N}, "[nW, N, N]");
    check_floating(*mask, (prefix + "mask").c_str());
    check_same_device(*mask, (prefix + "mask").c_str(), qkv, "qkv");
  }
  return grid;
}

void check_saved(const at::Tensor& grad, const at::Tensor& qkv, const at::Tensor& out, const at::Tensor& lse,
                 const char* op) {
  const std::string prefix = std::string(op) + ": ";
  const auto B = qkv.size(0), H = qkv.size(1), W = qkv.size(2), heads = qkv.size(4), d = qkv.size(5);
  check_shape(grad, (prefix + "grad").c_str(), {B, H, W, heads, d});
  check_shape(out, (prefix + "out").c_str(), {B, H, W, heads, d});
  check_shape(lse, (prefix + "lse").c_str(), {B, H, W, heads});
  check_same_dtype(grad, (prefix + "grad").c_str(), qkv, "qkv");
  check_same_dtype(out, (prefix + "out").c_str(), qkv, "qkv");
  TORCH_CHECK_TYPE(lse.scalar_type() == at::toOpMathType(qkv.scalar_type()), prefix, "lse must be ",
                   at::toOpMathType(qkv.scalar_type()), ", got ", lse.scalar_type());
  for (const auto* t : {&grad, &out, &lse}) check_same_device(*t, (prefix + "grad, out and lse").c_str(), qkv, "qkv");
}

Inputs prepare(const char* op, WindowGrid grid, const at::Tensor& qkv_in, const c10::optional<at::Tensor>& bias,
               const c10::optional<at::Tensor>& mask) {
  auto qkv = qkv_in.contiguous();
  return {op,
          grid,
          qkv,
          bias.has_value() ? bias->contiguous() : at::Tensor(),
          mask.has_value() ? mask->to(at::toOpMathType(qkv.scalar_type())).contiguous() : at::Tensor(),
          qkv.size(0),
          qkv.size(4),
          qkv.size(5)};
}

}  // namespace

at::TensorOptions Inputs::acc_options() const { return qkv.options().dtype(at::toOpMathType(qkv.scalar_type())); }

Inputs forward_inputs(const at::Tensor& qkv, const c10::optional<at::Tensor>& bias,
                      const c10::optional<at::Tensor>& mask, int64_t window_size, int64_t shift_size) {
  const char* op = "window_attention";
  return prepare(op, check_inputs(qkv, bias, mask, window_size, shift_size, op), qkv, bias, mask);
}

BackwardInputs backward_inputs(const at::Tensor& grad, const at::Tensor& qkv, const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& mask, const at::Tensor& out, const at::Tensor& lse,
                               int64_t window_size, int64_t shift_size) {
  const char* op = "window_attention_backward";
  const WindowGrid grid = check_inputs(qkv, bias, mask, window_size, shift_size, op);
  check_saved(grad, qkv, out, lse, op);
  return {prepare(op, grid, qkv, bias, mask), grad.contiguous(), out.contiguous(), lse.contiguous()};
}

namespace {

void window_attention_check(const at::Tensor& qkv, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& mask, int64_t window_size, int64_t shift_size) {
  check_inputs(qkv, bias, mask, window_size, shift_size, "window_attention");
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CompositeImplicitAutograd, m) {
  m.impl("window_attention_check", &window_attention_check);
}

}  // namespace window_attention
}  // namespace attnkern
