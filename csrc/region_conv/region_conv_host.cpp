// Argument checks of the region_conv family, shared by the CPU and CUDA kernels.
#include "region_conv/region_conv.h"

#include <string>

#include "common/checks.h"

namespace attnkern {
namespace region_conv {

void check_region_assign_inputs(const at::Tensor& outputs, const at::Tensor& guide, const char* op) {
  const std::string prefix = std::string(op) + ": ";
  check_rank(outputs, (prefix + "outputs").c_str(), 5, "[B, r, C, H, W]");
  check_rank(guide, (prefix + "guide").c_str(), 4, "[B, r, H, W]");
  check_floating(outputs, (prefix + "outputs").c_str());
  check_same_dtype(outputs, (prefix + "outputs").c_str(), guide, "guide");
  check_same_device(outputs, (prefix + "outputs").c_str(), guide, "guide");
  TORCH_CHECK(guide.size(1) >= 1, prefix, "guide needs at least one region, got shape ", shape_str(guide));
  TORCH_CHECK(outputs.size(0) == guide.size(0) && outputs.size(1) == guide.size(1) &&
                  outputs.size(3) == guide.size(2) && outputs.size(4) == guide.size(3),
              prefix, "outputs [B, r, C, H, W] and guide [B, r, H, W] must agree in B, r, H and W, got ",
              shape_str(outputs), " and ", shape_str(guide));
}

void check_region_assign_grad(const at::Tensor& grad, const at::Tensor& outputs) {
  check_shape(grad, "region_assign_backward: grad", {outputs.size(0), outputs.size(2), outputs.size(3), outputs.size(4)});
  check_same_dtype(grad, "region_assign_backward: grad", outputs, "outputs");
  check_same_device(grad, "region_assign_backward: grad", outputs, "outputs");
}

}  // namespace region_conv
}  // namespace attnkern
