// Gating: argument checks (gating_host.cpp defines them). The math is in gating.h.
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
void check_spatial_pool_backward(const at::Tensor& grad, const at::Tensor& pooled, const at::Tensor& x);
Dims check_apply_gates(const at::Tensor& x, const std::optional<at::Tensor>& channel_gate,
                       const std::optional<at::Tensor>& pixel_gate, const char* op);

}  // namespace gating
}  // namespace attnkern
