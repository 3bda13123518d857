"""Dynamic region-aware convolution ops (DRConv)."""

from typing import Tuple, Union

import torch
from torch import Tensor

from .. import reference
from . import _plain
from ._cuda_routing import plain_on_cuda
from ._kernels import check_tensor, int_pair, run_check, save_inputs, use_kernel

__all__ = ["region_assign", "dynamic_region_conv"]

_ops = torch.ops.attnkern


def region_assign(outputs: Tensor, guide: Tensor) -> Tensor:
    """Per pixel, the output of the region its guide selects (DRConv's ``asign_index``).

    Args:
        outputs: [B, r, C, H, W], the candidate outputs of the r ≥ 1 regions.
        guide: [B, r, H, W], outputs' dtype and device; pixel (h, w) takes region
            argmax_r guide[b, r, h, w] (ties: the first; a NaN is the maximum — as ``torch.argmax``).

    Returns:
        [B, C, H, W]. Gradients follow DRConv's straight-through rule: ``outputs`` receives the
        incoming gradient at the selected region only, ``guide`` receives s ⊙ (G − Σ_r s·G) with
        s = softmax(guide, dim=1) and G_r = Σ_c grad·outputs_r.

    Raises:
        TypeError: a tensor is not floating point, or they differ in dtype or device.
        ValueError: the shapes do not fit each other, or r = 0.
    """
    op = "region_assign"
    check_tensor(outputs, "outputs", op)
    check_tensor(guide, "guide", op)
    if use_kernel(outputs, guide):
        return _ops.region_assign(outputs, guide)
    run_check(_ops.region_assign_check, outputs, guide)
    return reference.region_assign(outputs, guide)


IntPair = Union[int, Tuple[int, int]]


def dynamic_region_conv(x: Tensor, filters: Tensor, guide: Tensor, stride: IntPair = 1, padding: IntPair = 0,
                        dilation: IntPair = 1) -> Tensor:
    """Convolution with a per-sample filter per region, computing at each output pixel only the
    filter of the region its guide selects (DRConv).

    Args:
        x: [B, Cin, H, W], Cin ≥ 1.
        filters: [B, r, Cout, Cin, kh, kw], per sample and region (r ≥ 1, kh, kw ≥ 1).
        guide: [B, r, H', W'] at the output's size; pixel p uses region argmax_r guide[b, r, p] (as
            :func:`region_assign`).
        stride, padding, dilation: as ``torch.nn.functional.conv2d`` (int or pair; stride and dilation
            ≥ 1, padding ≥ 0). One dtype and device for the three tensors.

    Returns:
        [B, Cout, H', W']. Value and gradients equal those of DRConv's composition — every region's
        convolution (``reference.region_correlation``), then :func:`region_assign` — at 1/r of its
        work for the value: x and filters receive gradient through the selected region only; the
        guide's gradient needs every region's response, computed without storing r outputs.

    Raises:
        TypeError: a tensor is not floating point, they differ in dtype or device, or stride, padding
            or dilation is not an int or a pair of ints.
        ValueError: a value or shape is out of range or does not fit the others (the error names it).
    """
    op = "dynamic_region_conv"
    for t, name in ((x, "x"), (filters, "filters"), (guide, "guide")):
        check_tensor(t, name, op)
    stride, padding, dilation = (list(int_pair(v, name, op)) for v, name in
                                 ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    if use_kernel(x, filters, guide):
        if not plain_on_cuda("dynamic_region_conv", x, filters, guide):
            return _ops.dynamic_region_conv(x, filters, guide, stride, padding, dilation)
        run_check(_ops.dynamic_region_conv_check, x, filters, guide, stride, padding, dilation)
        # CUDA, training or half precision: the routing table (attnkern.ops._cuda_routing)
        return _plain.dynamic_region_conv(x, filters, guide, stride, padding, dilation)
    run_check(_ops.dynamic_region_conv_check, x, filters, guide, stride, padding, dilation)
    return reference.dynamic_region_conv(x, filters, guide, stride, padding, dilation)


def _region_assign_backward(ctx, grad):
    outputs, guide = ctx.saved_tensors
    return _ops.region_assign_backward(grad, outputs, guide)


def _conv_setup(ctx, inputs, output):
    x, filters, guide, stride, padding, dilation = inputs
    ctx.save_for_backward(x, filters, guide)
    ctx.geometry = (stride, padding, dilation)


def _conv_backward(ctx, grad):
    x, filters, guide = ctx.saved_tensors
    grads = _ops.dynamic_region_conv_backward(grad, x, filters, guide, *ctx.geometry)
    return (*grads, None, None, None)


torch.library.register_autograd("attnkern::region_assign", _region_assign_backward, setup_context=save_inputs)
torch.library.register_autograd("attnkern::dynamic_region_conv", _conv_backward, setup_context=_conv_setup)


@torch.library.register_fake("attnkern::region_assign")
def _region_assign_fake(outputs, guide):
    b, _, c, h, w = outputs.shape
    return outputs.new_empty(b, c, h, w)


@torch.library.register_fake("attnkern::region_assign_backward")
def _region_assign_backward_fake(grad, outputs, guide):
    return outputs.new_empty(outputs.shape), guide.new_empty(guide.shape)


@torch.library.register_fake("attnkern::dynamic_region_conv")
def _dynamic_region_conv_fake(x, filters, guide, stride, padding, dilation):
    return x.new_empty(x.shape[0], filters.shape[2], guide.shape[2], guide.shape[3])


@torch.library.register_fake("attnkern::dynamic_region_conv_backward")
def _dynamic_region_conv_backward_fake(grad, x, filters, guide, stride, padding, dilation):
    return x.new_empty(x.shape), filters.new_empty(filters.shape), guide.new_empty(guide.shape)
