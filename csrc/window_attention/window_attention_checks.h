// Window attention: argument checks and operand preparation (window_attention_host.cpp defines them).
// The math is in window_attention.h.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "window_attention/window_attention.h"

namespace attnkern {
namespace window_attention {

// Argument checks shared by the CPU and CUDA kernels. They return the grid.
WindowGrid check_inputs(const at::Tensor& qkv, const c10::optional<at::Tensor>& bias,
                        const c10::optional<at::Tensor>& mask, int64_t window_size, int64_t shift_size,
                        const char* op);
void check_saved(const at::Tensor& grad, const at::Tensor& qkv, const at::Tensor& out, const at::Tensor& lse,
                 const char* op);

// The bias and mask as the kernels read them: contiguous, bias in qkv's dtype, mask in the
// accumulation dtype; undefined when absent.
at::Tensor bias_operand(const c10::optional<at::Tensor>& bias);
at::Tensor mask_operand(const c10::optional<at::Tensor>& mask, const at::Tensor& qkv);

}  // namespace window_attention
}  // namespace attnkern
