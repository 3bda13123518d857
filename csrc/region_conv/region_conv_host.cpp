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

ConvGeometry conv_geometry(const at::Tensor& x, const at::Tensor& filters, const at::Tensor& guide,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, const char* op) {
  const std::string prefix = std::string(op) + ": ";
  check_rank(x, (prefix + "x").c_str(), 4, "[B, Cin, H, W]");
  check_rank(filters, (prefix + "filters").c_str(), 6, "[B, r, Cout, Cin, kh, kw]");
  check_rank(guide, (prefix + "guide").c_str(), 4, "[B, r, H', W']");
  check_floating(x, (prefix + "x").c_str());
  check_same_dtype(x, (prefix + "x").c_str(), filters, "filters");
  check_same_dtype(x, (prefix + "x").c_str(), guide, "guide");
  check_same_device(x, (prefix + "x").c_str(), filters, "filters");
  check_same_device(x, (prefix + "x").c_str(), guide, "guide");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, prefix,
              "stride, padding and dilation must have two values each");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0,
              prefix, "stride and dilation must be >= 1 and padding >= 0, got stride ", stride, ", padding ", padding,
              ", dilation ", dilation);
  ConvGeometry g;
  g.in_channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  g.out_channels = filters.size(2);
  g.kernel_h = filters.size(4);
  g.kernel_w = filters.size(5);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.out_height = (g.height + 2 * g.pad_h - g.dilation_h * (g.kernel_h - 1) - 1) / g.stride_h + 1;
  g.out_width = (g.width + 2 * g.pad_w - g.dilation_w * (g.kernel_w - 1) - 1) / g.stride_w + 1;
  TORCH_CHECK(filters.size(0) == x.size(0) && filters.size(3) == g.in_channels, prefix,
              "filters [B, r, Cout, Cin, kh, kw] must match x [B, Cin, H, W] in B and Cin, got ", shape_str(filters),
              " and ", shape_str(x));
  TORCH_CHECK(guide.size(0) == x.size(0) && guide.size(1) == filters.size(1), prefix,
              "guide [B, r, H', W'] must match filters in B and r, got ", shape_str(guide), " and ", shape_str(filters));
  TORCH_CHECK(filters.size(1) >= 1, prefix, "needs at least one region, got filters of shape ", shape_str(filters));
  TORCH_CHECK(g.out_height >= 1 && g.out_width >= 1, prefix, "the kernel does not fit the padded input: x ",
              shape_str(x), ", kernel ", g.kernel_h, "x", g.kernel_w);
  TORCH_CHECK(guide.size(2) == g.out_height && guide.size(3) == g.out_width, prefix,
              "guide must have the output's spatial size [", g.out_height, ", ", g.out_width, "], got ",
              shape_str(guide));
  return g;
}

}  // namespace region_conv
}  // namespace attnkern
