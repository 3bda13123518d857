// Argument checks of the gating family, shared by the CPU and CUDA kernels and the check ops.
#include "gating/gating.h"
#include "gating/gating_checks.h"

#include <torch/library.h>

#include <string>

#include "common/checks.h"

namespace attnkern {
namespace gating {
namespace {

Dims dims_of(const at::Tensor& x, const std::string& prefix) {
  check_rank(x, (prefix + "x").c_str(), 4, "[B, C, H, W]");
  check_floating(x, (prefix + "x").c_str());
  return {x.size(0), x.size(1), x.size(2), x.size(3)};
}

void check_like(const at::Tensor& t, const std::string& name, at::IntArrayRef shape, const at::Tensor& x,
                const char* layout = nullptr) {
  check_shape(t, name.c_str(), shape, layout);
  check_same_dtype(t, name.c_str(), x, "x");
  check_same_device(t, name.c_str(), x, "x");
}

}  // namespace

Dims check_channel_pool(const at::Tensor& x) {
  const Dims d = dims_of(x, "channel_pool: ");
  TORCH_CHECK_VALUE(d.HW() >= 1, "channel_pool: x needs at least one position to pool, got shape ", shape_str(x));
  return d;
}

Dims check_channel_pool_backward(const std::optional<at::Tensor>& grad_mean, const std::optional<at::Tensor>& grad_max,
                                 const at::Tensor& x, const at::Tensor& max) {
  const Dims d = dims_of(x, "channel_pool_backward: ");
  check_like(max, "channel_pool_backward: max", {d.B, d.C}, x);
  if (grad_mean.has_value()) check_like(*grad_mean, "channel_pool_backward: grad_mean", {d.B, d.C}, x);
  if (grad_max.has_value()) check_like(*grad_max, "channel_pool_backward: grad_max", {d.B, d.C}, x);
  return d;
}

Dims check_spatial_pool(const at::Tensor& x, const std::optional<at::Tensor>& gate, const char* op) {
  const std::string prefix = std::string(op) + ": ";
  const Dims d = dims_of(x, prefix);
  TORCH_CHECK_VALUE(d.C >= 1, prefix, "x needs at least one channel to pool, got shape ", shape_str(x));
  if (gate.has_value()) check_like(*gate, prefix + "gate", {d.B, d.C}, x, "[B, C]");
  return d;
}

Dims check_spatial_pool_backward(const at::Tensor& grad, const at::Tensor& x, const std::optional<at::Tensor>& gate,
                                 const at::Tensor& pooled) {
  const Dims d = check_spatial_pool(x, gate, "spatial_pool_backward");
  check_like(grad, "spatial_pool_backward: grad", {d.B, 2, d.H, d.W}, x);
  check_like(pooled, "spatial_pool_backward: pooled", {d.B, 2, d.H, d.W}, x);
  return d;
}

Dims check_apply_gates(const at::Tensor& x, const std::optional<at::Tensor>& channel_gate,
                       const std::optional<at::Tensor>& pixel_gate, const char* op) {
  const std::string prefix = std::string(op) + ": ";
  const Dims d = dims_of(x, prefix);
  TORCH_CHECK_VALUE(channel_gate.has_value() || pixel_gate.has_value(), prefix,
                    "needs a channel_gate, a pixel_gate or both, got neither");
  if (channel_gate.has_value()) check_like(*channel_gate, prefix + "channel_gate", {d.B, d.C}, x, "[B, C]");
  if (pixel_gate.has_value()) check_like(*pixel_gate, prefix + "pixel_gate", {d.B, 1, d.H, d.W}, x, "[B, 1, H, W]");
  return d;
}

Dims check_apply_gates_backward(const at::Tensor& grad, const at::Tensor& x,
                                const std::optional<at::Tensor>& channel_gate,
                                const std::optional<at::Tensor>& pixel_gate) {
  const Dims d = check_apply_gates(x, channel_gate, pixel_gate, "apply_gates_backward");
  check_like(grad, "apply_gates_backward: grad", x.sizes(), x);
  return d;
}

GroupDims check_group_enhance(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
                              const char* op) {
  const std::string prefix = std::string(op) + ": ";
  const Dims d = dims_of(x, prefix);
  TORCH_CHECK_VALUE(groups >= 1, prefix, "groups must be positive, got ", groups);
  TORCH_CHECK_VALUE(d.C % groups == 0, prefix, "x's channels must be divisible by groups = ", groups, ", got shape ",
                    shape_str(x));
  check_like(weight, prefix + "weight", {groups}, x, "[G]");
  check_like(bias, prefix + "bias", {groups}, x, "[G]");
  return {d, groups};
}

GroupDims check_group_enhance_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                       const at::Tensor& bias, int64_t groups) {
  const GroupDims d = check_group_enhance(x, weight, bias, groups, "group_enhance_backward");
  check_like(grad, "group_enhance_backward: grad", x.sizes(), x);
  return d;
}

namespace {

void channel_pool_check(const at::Tensor& x) { check_channel_pool(x); }

void spatial_pool_check(const at::Tensor& x, const std::optional<at::Tensor>& gate) {
  check_spatial_pool(x, gate, "spatial_pool");
}

void apply_gates_check(const at::Tensor& x, const std::optional<at::Tensor>& channel_gate,
                       const std::optional<at::Tensor>& pixel_gate) {
  check_apply_gates(x, channel_gate, pixel_gate, "apply_gates");
}

void group_enhance_check(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t groups) {
  check_group_enhance(x, weight, bias, groups, "group_enhance");
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CompositeImplicitAutograd, m) {
  m.impl("channel_pool_check", &channel_pool_check);
  m.impl("spatial_pool_check", &spatial_pool_check);
  m.impl("apply_gates_check", &apply_gates_check);
  m.impl("group_enhance_check", &group_enhance_check);
}

}  // namespace gating
}  // namespace attnkern
