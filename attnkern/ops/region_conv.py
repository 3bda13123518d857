"""Dynamic region-aware convolution ops (DRConv)."""

from typing import Tuple, Union

import torch
from torch import Tensor

from .. import reference
from ._kernels import check_floating, has_kernel, save_inputs

__all__ = ["region_assign", "dynamic_region_conv"]


def region_assign(outputs: Tensor, guide: Tensor) -> Tensor:
    """Per pixel, the output of the region its guide selects (DRConv's ``asign_index``).

    Args:
        outputs: [B, r, C, H, W], the candidate outputs of the r regions.
        guide: [B, r, H, W]; pixel (h, w) takes region argmax_r guide[b, r, h, w] (ties: the first, as
            ``torch.argmax``).

    Returns:
        [B, C, H, W]. Gradients follow DRConv's straight-through rule: ``outputs`` receives the
        incoming gradient at the selected region only, ``guide`` receives s ⊙ (G − Σ_r s·G) with
        s = softmax(guide, dim=1) and G_r = Σ_c grad·outputs_r.
    """
    op = "region_assign"
    check_floating(outputs, "outputs", op)
    check_floating(guide, "guide", op)
    if outputs.dim() != 5 or guide.dim() != 4:
        raise ValueError(f"{op}: outputs must be [B, r, C, H, W] and guide [B, r, H, W], got shapes "
                         f"{tuple(outputs.shape)} and {tuple(guide.shape)}")
    b, r, _, h, w = outputs.shape
    if tuple(guide.shape) != (b, r, h, w):
        raise ValueError(f"{op}: guide must be [B, r, H, W] = [{b}, {r}, {h}, {w}] for outputs of shape "
                         f"{tuple(outputs.shape)}, got {tuple(guide.shape)}")
    if r == 0:
        raise ValueError(f"{op}: needs at least one region, got r = 0")
    if outputs.dtype != guide.dtype or outputs.device != guide.device:
        raise TypeError(f"{op}: outputs and guide must share dtype and device, got {outputs.dtype} on "
                        f"{outputs.device} and {guide.dtype} on {guide.device}")
    if not has_kernel(outputs):
        return reference.region_assign(outputs, guide)
    return torch.ops.attnkern.region_assign(outputs, guide)


IntPair = Union[int, Tuple[int, int]]


def _pair(value: IntPair, name: str, op: str) -> Tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    return pair


def dynamic_region_conv(x: Tensor, filters: Tensor, guide: Tensor, stride: IntPair = 1, padding: IntPair = 0,
                        dilation: IntPair = 1) -> Tensor:
    """Convolution with a per-sample filter per region, computing at each output pixel only the
    filter of the region its guide selects (DRConv).

    Args:
        x: [B, Cin, H, W].
        filters: [B, r, Cout, Cin, kh, kw], per sample and region.
        guide: [B, r, H', W'] at the output's size; pixel p uses region argmax_r guide[b, r, p].
        stride, padding, dilation: as ``torch.nn.functional.conv2d`` (int or pair).

    Returns:
        [B, Cout, H', W']. Value and gradients equal those of DRConv's composition — every region's
        convolution (``reference.region_correlation``), then :func:`region_assign` — at 1/r of its
        work for the value: x and filters receive gradient through the selected region only; the
        guide's gradient needs every region's response, computed without storing r outputs.
    """
    op = "dynamic_region_conv"
    for t, name in ((x, "x"), (filters, "filters"), (guide, "guide")):
        check_floating(t, name, op)
    if x.dim() != 4 or filters.dim() != 6 or guide.dim() != 4:
        raise ValueError(f"{op}: expected x [B, Cin, H, W], filters [B, r, Cout, Cin, kh, kw] and guide "
                         f"[B, r, H', W'], got shapes {tuple(x.shape)}, {tuple(filters.shape)} and {tuple(guide.shape)}")
    stride, padding, dilation = _pair(stride, "stride", op), _pair(padding, "padding", op), _pair(dilation, "dilation", op)
    if filters.shape[0] != x.shape[0] or filters.shape[3] != x.shape[1]:
        raise ValueError(f"{op}: filters [B, r, Cout, Cin, kh, kw] must match x [B, Cin, H, W] in B and Cin, got "
                         f"{tuple(filters.shape)} and {tuple(x.shape)}")
    if guide.shape[0] != x.shape[0] or guide.shape[1] != filters.shape[1]:
        raise ValueError(f"{op}: guide [B, r, H', W'] must match filters in B and r, got {tuple(guide.shape)} and "
                         f"{tuple(filters.shape)}")
    out_size = [(x.shape[2 + d] + 2 * padding[d] - dilation[d] * (filters.shape[4 + d] - 1) - 1) // stride[d] + 1
                for d in range(2)]
    if list(guide.shape[2:]) != out_size:
        raise ValueError(f"{op}: guide must have the output's spatial size {out_size}, got {list(guide.shape[2:])}")
    if not (x.dtype == filters.dtype == guide.dtype) or not (x.device == filters.device == guide.device):
        raise TypeError(f"{op}: x, filters and guide must share dtype and device, got {x.dtype}/{filters.dtype}/"
                        f"{guide.dtype} on {x.device}/{filters.device}/{guide.device}")
    if not has_kernel(x):
        return reference.dynamic_region_conv(x, filters, guide, stride, padding, dilation)
    return torch.ops.attnkern.dynamic_region_conv(x, filters, guide, list(stride), list(padding), list(dilation))


def _region_assign_backward(ctx, grad):
    outputs, guide = ctx.saved_tensors
    return torch.ops.attnkern.region_assign_backward(grad, outputs, guide)


def _conv_setup(ctx, inputs, output):
    x, filters, guide, stride, padding, dilation = inputs
    ctx.save_for_backward(x, filters, guide)
    ctx.geometry = (stride, padding, dilation)


def _conv_backward(ctx, grad):
    x, filters, guide = ctx.saved_tensors
    grads = torch.ops.attnkern.dynamic_region_conv_backward(grad, x, filters, guide, *ctx.geometry)
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
