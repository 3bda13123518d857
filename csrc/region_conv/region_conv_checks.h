// Region convolution: argument checks (region_conv_host.cpp defines them). The math is in region_conv.h.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "region_conv/region_conv.h"

namespace attnkern {
namespace region_conv {

// Argument checks (region_conv_host.cpp): the kernels and the check ops call them.
void check_region_assign_inputs(const at::Tensor& outputs, const at::Tensor& guide, const char* op);
void check_region_assign_grad(const at::Tensor& grad, const at::Tensor& outputs);
// Checks x [B, Cin, H, W], filters [B, r, Cout, Cin, kh, kw], guide [B, r, H', W'] and returns the geometry.
ConvGeometry conv_geometry(const at::Tensor& x, const at::Tensor& filters, const at::Tensor& guide,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, const char* op);
// Checks the backward's incoming gradient [B, Cout, H', W'] against x and the geometry.
void check_conv_grad(const at::Tensor& grad, const at::Tensor& x, const ConvGeometry& g, const char* op);

}  // namespace region_conv
}  // namespace attnkern
