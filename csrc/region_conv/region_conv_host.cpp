// Argument checks of the region_conv family, shared by the CPU and CUDA kernels and the check ops.
#include "region_conv/region_conv.h"
#include "region_conv/region_conv_checks.h"

#include <torch/library.h>

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
  TORCH_CHECK_VALUE(guide.size(1) >= 1, prefix, "guide needs at least one region (r >= 1), got shape ",
                    shape_str(guide));
  TORCH_CHECK_VALUE(outputs.size(0) == guide.size(0) && outputs.size(1) == guide.size(1) &&
                    outputs.size(3) == guide.size(2) && outputs.size(4) == guide.size(3),
                    prefix, "outputs [B, r, C, H, W] and guide [B, r, H, W] must agree in B, r, H and W, got ",
                    shape_str(outputs), " and ", shape_str(guide));
}

void check_region_assign_grad(const at::Tensor& grad, const at::Tensor& outputs) {
  check_shape(grad, "region_assign_backward: grad", {outputs.size(0), outputs.size(2), outputs.size(3), outputs.size(4)});
  check_same_dtype(grad, "region_assign_backward: grad", outputs, "outputs");
  check_same_device(grad, "region_assign_backward: grad", outputs, "outputs");
}

namespace {

// stride, padding and dilation: two values each, stride and dilation >= 1, padding >= 0.
void check_conv_arguments(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                          const std::string& prefix) {
  const struct {
    const char* name;
    at::IntArrayRef values;
    int64_t least;
  } arguments[] = {{"stride", stride, 1}, {"padding", padding, 0}, {"dilation", dilation, 1}};
  for (const auto& [name, values, least] : arguments) {
    TORCH_CHECK_VALUE(values.size() == 2, prefix, name, " must have two values (height, width), got ", values);
    TORCH_CHECK_VALUE(values[0] >= least && values[1] >= least, prefix, name, " must be >= ", least, ", got ", values);
  }
}

// (in + 2·pad − (dilation·(kernel − 1) + 1))/stride + 1 along one axis (`axis` "H" or "W", `k` "kh" or
// "kw"), every step checked for overflow; a ValueError when the dilated kernel does not fit the padded input.
int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation, const char* axis,
                         const char* k, const std::string& prefix) {
  const std::string twice = prefix + "2·padding along " + axis, padded_name = prefix + "x's " + axis + " + 2·padding";
  const int64_t padded = checked_add(in, checked_mul(2, pad, twice.c_str()), padded_name.c_str());
  const std::string span = prefix + "dilation·(" + k + " - 1) along " + axis;
  const int64_t extent = checked_add(checked_mul(dilation, kernel - 1, span.c_str()), 1, span.c_str());
  TORCH_CHECK_VALUE(padded >= extent, prefix, "the filters' kernel, dilated (dilation·(", k, " - 1) + 1 = ", extent,
                    "), does not fit x padded (", axis, " + 2·padding = ", padded, ") along ", axis);
  return (padded - extent) / stride + 1;
}

}  // namespace

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
  check_conv_arguments(stride, padding, dilation, prefix);
  TORCH_CHECK_VALUE(filters.size(0) == x.size(0) && filters.size(3) == x.size(1), prefix,
                    "filters [B, r, Cout, Cin, kh, kw] must match x [B, Cin, H, W] in B and Cin, got ",
                    shape_str(filters), " and ", shape_str(x));
  // As torch.nn.functional.conv2d: an empty batch is fine, an empty image or no input channel is not.
  TORCH_CHECK_VALUE(x.size(1) >= 1 && x.size(2) >= 1 && x.size(3) >= 1, prefix,
                    "x needs at least one input channel and pixel (Cin, H, W >= 1), got shape ", shape_str(x));
  TORCH_CHECK_VALUE(filters.size(1) >= 1, prefix, "filters need at least one region (r >= 1), got shape ",
                    shape_str(filters));
  TORCH_CHECK_VALUE(filters.size(4) >= 1 && filters.size(5) >= 1, prefix,
                    "filters need a kernel of at least 1x1 (kh, kw >= 1), got shape ", shape_str(filters));
  TORCH_CHECK_VALUE(guide.size(0) == x.size(0) && guide.size(1) == filters.size(1), prefix,
                    "guide [B, r, H', W'] must match filters in B and r, got ", shape_str(guide), " and ",
                    shape_str(filters));
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
  g.out_height = conv_output_size(g.height, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, "H", "kh", prefix);
  g.out_width = conv_output_size(g.width, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, "W", "kw", prefix);
  TORCH_CHECK_VALUE(guide.size(2) == g.out_height && guide.size(3) == g.out_width, prefix,
                    "guide must have the output's spatial size [H', W'] = [", g.out_height, ", ", g.out_width,
                    "], got shape ", shape_str(guide));
  // The output [B, Cout, H', W'] (Cout from filters, H' and W' from guide: each fits on its own).
  checked_mul(g.out_channels, checked_mul(g.out_height, g.out_width, (prefix + "H'·W'").c_str()),
              (prefix + "the output size Cout·H'·W'").c_str());
  return g;
}

void check_conv_grad(const at::Tensor& grad, const at::Tensor& x, const ConvGeometry& g, const char* op) {
  const std::string name = std::string(op) + ": grad";
  check_shape(grad, name.c_str(), {x.size(0), g.out_channels, g.out_height, g.out_width});
  check_same_dtype(grad, name.c_str(), x, "x");
  check_same_device(grad, name.c_str(), x, "x");
}

namespace {

void region_assign_check(const at::Tensor& outputs, const at::Tensor& guide) {
  check_region_assign_inputs(outputs, guide, "region_assign");
}

void dynamic_region_conv_check(const at::Tensor& x, const at::Tensor& filters, const at::Tensor& guide,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  conv_geometry(x, filters, guide, stride, padding, dilation, "dynamic_region_conv");
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CompositeImplicitAutograd, m) {
  m.impl("region_assign_check", &region_assign_check);
  m.impl("dynamic_region_conv_check", &dynamic_region_conv_check);
}

}  // namespace region_conv
}  // namespace attnkern
