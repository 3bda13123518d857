// Gating: argument checks (gating_host.cpp defines them) and the optional operands' helpers, for the host
// code of both devices. The math is in gating.h.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "gating/gating.h"

namespace attnkern {
namespace gating {

// Each returns the sizes (B, C, HW) of x after checking every tensor against it.
struct Dims {
  int64_t B, C, H, W;
  int64_t HW() const { return H * W; }
};
Dims check_channel_pool(const at::Tensor& x);
Dims check_channel_pool_backward(const std::optional<at::Tensor>& grad_mean, const std::optional<at::Tensor>& grad_max,
                                 const at::Tensor& x, const at::Tensor& max);
Dims check_spatial_pool(const at::Tensor& x, const std::optional<at::Tensor>& gate, const char* op);
Dims check_spatial_pool_backward(const at::Tensor& grad, const at::Tensor& x, const std::optional<at::Tensor>& gate,
                                 const at::Tensor& pooled);
Dims check_apply_gates(const at::Tensor& x, const std::optional<at::Tensor>& channel_gate,
                       const std::optional<at::Tensor>& pixel_gate, const char* op);
Dims check_apply_gates_backward(const at::Tensor& grad, const at::Tensor& x,
                                const std::optional<at::Tensor>& channel_gate,
                                const std::optional<at::Tensor>& pixel_gate);

// group_enhance: also the group count G and the group's channels C / G.
struct GroupDims : Dims {
  int64_t G;
  int64_t group_channels() const { return C / G; }
};
GroupDims check_group_enhance(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
                              const char* op);
GroupDims check_group_enhance_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                       const at::Tensor& bias, int64_t groups);

// An optional operand contiguous; absent stays absent.
inline std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

// An optional operand's data for a kernel: null when absent.
template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

// The gradient of an optional input, for the kernel to fill: shaped like it, or empty when it is absent.
inline at::Tensor empty_gradient(const std::optional<at::Tensor>& t, const at::Tensor& x) {
  return t.has_value() ? at::empty_like(*t) : x.new_empty({0});
}

}  // namespace gating
}  // namespace attnkern
