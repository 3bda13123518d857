// Window attention: argument checks and operand preparation, shared by the CPU and CUDA kernels
// (window_attention_host.cpp defines them).
// The math is in window_attention.h.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "window_attention/window_attention.h"

namespace attnkern {
namespace window_attention {

// A call's operands, checked (the forward's arguments; the backward's saved tensors too) and as the
// kernels read them: qkv contiguous, bias contiguous in qkv's dtype, mask contiguous in the accumulation
// dtype, bias and mask undefined when absent; B, heads and d of qkv; op names the call in errors.
struct Inputs {
  const char* op;
  WindowGrid grid;
  at::Tensor qkv, bias, mask;
  int64_t B, heads, d;

  at::TensorOptions acc_options() const;  // qkv's options in the accumulation dtype (the lse's)
};
struct BackwardInputs : Inputs {
  at::Tensor grad, out, lse;  // contiguous
};

Inputs forward_inputs(const at::Tensor& qkv, const c10::optional<at::Tensor>& bias,
                      const c10::optional<at::Tensor>& mask, int64_t window_size, int64_t shift_size);
BackwardInputs backward_inputs(const at::Tensor& grad, const at::Tensor& qkv, const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& mask, const at::Tensor& out, const at::Tensor& lse,
                               int64_t window_size, int64_t shift_size);

}  // namespace window_attention
}  // namespace attnkern
