"""Gating ops of squeeze-excite / CBAM / SGE-style attention: the poolings that make the gates and the
products that apply them, each one pass over the feature map (and one fused pass for its backward;
on the CPU, channel_pool's forward is ATen's two vectorised reductions, measured faster there).

    mean, mx = channel_pool(x)               # over H·W: what SE and CBAM's channel attention pool
    pooled = spatial_pool(x, channel_gate)   # [mean_c; max_c] of x·gate, without materialising x·gate
    out = apply_gates(x, channel_gate, pixel_gate)   # x·g_c·g_hw in one pass
    out = group_enhance(x, weight, bias, groups)     # SGE's gate, a (sample, group) at a time

Maxima follow ``torch.amax``: a NaN wins, and the gradient is split evenly between tied maxima (the
published CBAM's ``AdaptiveMaxPool2d`` / ``torch.max`` route it all to one of them; both agree when the
maximum is unique). A NaN maximum passes no gradient, as no element equals it (``torch.amax``'s gradient
is NaN over the whole reduction there).
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import reference
from ._kernels import check_int, check_tensor, kernel_or_reference

__all__ = ["channel_pool", "spatial_pool", "apply_gates", "group_enhance"]

_ops = torch.ops.attnkern


def channel_pool(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and maximum over the H·W positions of every channel (one pass on CUDA).

    Args:
        x: [B, C, H, W] with H·W ≥ 1.

    Returns:
        (mean, max), each [B, C] in x's dtype (float32 accumulation for half types). A NaN in a channel
        makes its mean and its maximum NaN; ±inf count as numbers (+inf wins the max; +inf and −inf
        together give a NaN mean). Backward: the mean's gradient spreads evenly over the positions, the
        max's goes to the maximum (split evenly between tied maxima, as ``torch.amax``).

    Raises:
        TypeError: x is not a floating-point tensor.
        ValueError: x is not [B, C, H, W], or has no position (H·W = 0).
    """
    op = "channel_pool"
    check_tensor(x, "x", op)
    return kernel_or_reference(_ops.channel_pool, _ops.channel_pool_check, reference.channel_pool, x)


def spatial_pool(x: Tensor, gate: Optional[Tensor] = None) -> Tensor:
    """Mean and maximum over the channels of every pixel of y = x · gate[:, :, None, None] (y = x
    without a gate), in one pass that never stores y.

    Args:
        x: [B, C, H, W] with C ≥ 1.
        gate: optional [B, C] channel gate, x's dtype and device.

    Returns:
        [B, 2, H, W]: channel 0 the mean, channel 1 the maximum (CBAM's ``cat([mean, max], 1)``), NaN
        winning as in :func:`channel_pool`. Gradients reach x and gate; the maximum's is split evenly
        between tied maxima. With no pixels (H·W = 0) the gate's gradient is zero.

    Raises:
        TypeError: a tensor is not floating point, or gate differs from x in dtype or device.
        ValueError: x is not [B, C, H, W] or has no channel, or gate is not [B, C].
    """
    op = "spatial_pool"
    check_tensor(x, "x", op)
    check_tensor(gate, "gate", op, optional=True)
    return kernel_or_reference(_ops.spatial_pool, _ops.spatial_pool_check, reference.spatial_pool, x, gate)


def apply_gates(x: Tensor, channel_gate: Optional[Tensor] = None, pixel_gate: Optional[Tensor] = None) -> Tensor:
    """x · channel_gate[b, c] · pixel_gate[b, 0, h, w] in one pass (either gate may be None, not both).

    Args:
        x: [B, C, H, W].
        channel_gate: [B, C] (SE, CBAM's channel attention).
        pixel_gate: [B, 1, H, W] (CBAM's spatial attention). Both in x's dtype and on its device.

    Returns:
        [B, C, H, W]. Backward is one pass too: grad_x, and the gates' gradients Σ_hw grad·x·g_hw and
        Σ_c grad·x·g_c, reduced in a fixed order (deterministic); zero where the sum is empty.

    Raises:
        TypeError: a tensor is not floating point, or a gate differs from x in dtype or device.
        ValueError: x is not [B, C, H, W], a gate's shape does not fit x, or both gates are None.
    """
    op = "apply_gates"
    check_tensor(x, "x", op)
    check_tensor(channel_gate, "channel_gate", op, optional=True)
    check_tensor(pixel_gate, "pixel_gate", op, optional=True)
    return kernel_or_reference(_ops.apply_gates, _ops.apply_gates_check, reference.apply_gates, x, channel_gate,
                               pixel_gate)


def group_enhance(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    """SGE's gate (spatial group-wise enhance, Li, Hu & Yang 2019): the C channels split into ``groups``
    groups; per sample and group, at every position p

        s_p = x_p · mean_hw(x)                          (the feature's similarity to the group's mean)
        ĉ_p = (s_p − mean(s)) / (std(s) + 1e-5)         over the H·W positions, std unbiased (ĉ = 0 at one)
        out_p = x_p · sigmoid(weight[g]·ĉ_p + bias[g])

    computed a (sample, group) at a time: the group's values are read from memory once a pass and reused
    from the cache (the layer's ATen ops each take a pass over the whole map). The backward recomputes the
    gates from x and saves nothing else.

    Args:
        x: [B, C, H, W] with C divisible by groups.
        weight, bias: [G], x's dtype and device (``SGE``'s [1, G, 1, 1] parameters flattened).
        groups: G ≥ 1.

    Returns:
        [B, C, H, W]. Gradients reach x, weight and bias (the latter two summed over the samples in a fixed
        order). Where a group's similarity is constant (std 0: e.g. all-zero channels) the gradient through
        the std is 0, as autograd's.

    Raises:
        TypeError: a tensor is not floating point, weight or bias differs from x in dtype or device, or groups
            is not an int.
        ValueError: x is not [B, C, H, W], groups < 1 or does not divide C, or weight or bias is not [G].
    """
    op = "group_enhance"
    check_tensor(x, "x", op)
    check_tensor(weight, "weight", op)
    check_tensor(bias, "bias", op)
    groups = check_int(groups, "groups", op)
    return kernel_or_reference(_ops.group_enhance, _ops.group_enhance_check, reference.group_enhance, x, weight, bias,
                               groups)


# ---- autograd and fake kernels --------------------------------------------------------------


def _channel_pool_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1])


def _channel_pool_backward(ctx, grad_mean, grad_max):
    x, mx = ctx.saved_tensors
    return _ops.channel_pool_backward(grad_mean, grad_max, x, mx)


def _spatial_pool_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], output)


def _spatial_pool_backward(ctx, grad):
    x, gate, pooled = ctx.saved_tensors
    grad_x, grad_gate = _ops.spatial_pool_backward(grad, x, gate, pooled)
    return grad_x, (grad_gate if gate is not None else None)


def _apply_gates_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _apply_gates_backward(ctx, grad):
    x, channel_gate, pixel_gate = ctx.saved_tensors
    grad_x, grad_c, grad_p = _ops.apply_gates_backward(grad, x, channel_gate, pixel_gate)
    return grad_x, (grad_c if channel_gate is not None else None), (grad_p if pixel_gate is not None else None)


def _group_enhance_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.groups = inputs[3]


def _group_enhance_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    return (*_ops.group_enhance_backward(grad, x, weight, bias, ctx.groups), None)


torch.library.register_autograd("attnkern::channel_pool", _channel_pool_backward, setup_context=_channel_pool_setup)
torch.library.register_autograd("attnkern::spatial_pool", _spatial_pool_backward, setup_context=_spatial_pool_setup)
torch.library.register_autograd("attnkern::apply_gates", _apply_gates_backward, setup_context=_apply_gates_setup)
torch.library.register_autograd("attnkern::group_enhance", _group_enhance_backward,
                                setup_context=_group_enhance_setup)


@torch.library.register_fake("attnkern::channel_pool")
def _channel_pool_fake(x):
    return x.new_empty(x.shape[:2]), x.new_empty(x.shape[:2])


@torch.library.register_fake("attnkern::channel_pool_backward")
def _channel_pool_backward_fake(grad_mean, grad_max, x, mx):
    return x.new_empty(x.shape)


@torch.library.register_fake("attnkern::spatial_pool")
def _spatial_pool_fake(x, gate):
    return x.new_empty(x.shape[0], 2, x.shape[2], x.shape[3])


@torch.library.register_fake("attnkern::spatial_pool_backward")
def _spatial_pool_backward_fake(grad, x, gate, pooled):
    return x.new_empty(x.shape), (gate.new_empty(gate.shape) if gate is not None else x.new_empty(0))


@torch.library.register_fake("attnkern::apply_gates")
def _apply_gates_fake(x, channel_gate, pixel_gate):
    return x.new_empty(x.shape)


@torch.library.register_fake("attnkern::apply_gates_backward")
def _apply_gates_backward_fake(grad, x, channel_gate, pixel_gate):
    return (x.new_empty(x.shape),
            channel_gate.new_empty(channel_gate.shape) if channel_gate is not None else x.new_empty(0),
            pixel_gate.new_empty(pixel_gate.shape) if pixel_gate is not None else x.new_empty(0))


@torch.library.register_fake("attnkern::group_enhance")
def _group_enhance_fake(x, weight, bias, groups):
    return x.new_empty(x.shape)


@torch.library.register_fake("attnkern::group_enhance_backward")
def _group_enhance_backward_fake(grad, x, weight, bias, groups):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), bias.new_empty(bias.shape)
