"""Criss-cross attention ops (CCNet): affinity and aggregation over each pixel's row and column.

A pixel (h, w) attends to P = H + W − 1 positions, laid out along dim 1 of every [B, P, H, W] map as:
its row first, p = 0..W−1 → (h, p) (the pixel itself at p = w); then its column without itself,
p = W + i → (i, w) for i < h and (i + 1, w) for i ≥ h.
"""

import torch
from torch import Tensor

from .. import reference
from ._kernels import accumulation_dtype, check_floating, has_kernel, save_inputs

__all__ = ["criss_cross_affinity", "criss_cross_aggregate", "criss_cross_attention"]


def _check_map_pair(attn: Tensor, x: Tensor, x_name: str, op: str) -> None:
    check_floating(attn, "attn", op)
    check_floating(x, x_name, op)
    if x.dim() != 4:
        raise ValueError(f"{op}: {x_name} must be [B, C, H, W], got shape {tuple(x.shape)}")
    B, _, H, W = x.shape
    if attn.dim() != 4 or (attn.shape[0], attn.shape[2], attn.shape[3]) != (B, H, W):
        raise ValueError(f"{op}: attn must be [B, H+W-1, H, W] = [{B}, {H + W - 1}, {H}, {W}] for {x_name} of shape "
                         f"{tuple(x.shape)}, got {tuple(attn.shape)}")
    if attn.shape[1] != H + W - 1:
        raise ValueError(f"{op}: attn must hold H + W - 1 = {H + W - 1} positions in dim 1, got {attn.shape[1]}")
    if attn.dtype != x.dtype or attn.device != x.device:
        raise TypeError(f"{op}: attn and {x_name} must share dtype and device, got {attn.dtype} on {attn.device} "
                        f"and {x.dtype} on {x.device}")


def _check_qk(q: Tensor, k: Tensor, op: str) -> None:
    check_floating(q, "q", op)
    check_floating(k, "k", op)
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"{op}: q and k must be [B, C, H, W], got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"{op}: q and k must have the same number of channels, got {q.shape[1]} and {k.shape[1]}")
    if q.shape != k.shape:
        raise ValueError(f"{op}: q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.dtype != k.dtype or q.device != k.device:
        raise TypeError(f"{op}: q and k must share dtype and device, got {q.dtype} on {q.device} and "
                        f"{k.dtype} on {k.device}")


def criss_cross_affinity(q: Tensor, k: Tensor) -> Tensor:
    """Energies of each pixel over its row and column.

    Args:
        q, k: [B, C, H, W], same shape, dtype and device.

    Returns:
        [B, H+W−1, H, W]: ``e[b, p, h, w] = Σ_c q[b, c, h, w]·k[b, c, position p of (h, w)]``, positions
        laid out as the module docstring says (row first, then the column without the pixel).

    Example:
        >>> attn = attnkern.ops.criss_cross_affinity(q, k).softmax(dim=1)
    """
    _check_qk(q, k, "criss_cross_affinity")
    if not has_kernel(q):
        return reference.criss_cross_affinity(q, k)
    return torch.ops.attnkern.criss_cross_affinity(q, k)


def criss_cross_aggregate(attn: Tensor, v: Tensor) -> Tensor:
    """Aggregate values over each pixel's row and column.

    Args:
        attn: [B, H+W−1, H, W] weights (e.g. the softmax of :func:`criss_cross_affinity` over dim 1).
        v: [B, C, H, W].

    Returns:
        [B, C, H, W]: ``out[b, c, h, w] = Σ_p attn[b, p, h, w]·v[b, c, position p of (h, w)]``.
    """
    _check_map_pair(attn, v, "v", "criss_cross_aggregate")
    if not has_kernel(v):
        return reference.criss_cross_aggregate(attn, v)
    return torch.ops.attnkern.criss_cross_aggregate(attn, v)


def criss_cross_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Criss-cross attention in one op: each pixel's softmax over its row and column, applied to v.

    Equals ``criss_cross_aggregate(criss_cross_affinity(q, k).softmax(dim=1), v)`` without writing the
    [B, H+W−1, H, W] energies or attention maps: the kernels keep one pixel's (CUDA) or one image
    row's (CPU) energies at a time, save a per-pixel log-sum-exp [B, H, W] for the backward, and the
    backward recomputes the weights from it.

    Args:
        q, k: [B, C, H, W]; v: [B, C', H, W]; one dtype and device.

    Returns:
        [B, C', H, W].
    """
    op = "criss_cross_attention"
    _check_qk(q, k, op)
    check_floating(v, "v", op)
    if v.dim() != 4 or (v.shape[0], v.shape[2], v.shape[3]) != (q.shape[0], q.shape[2], q.shape[3]):
        raise ValueError(f"{op}: v must be [B, C', H, W] with q's B, H, W = {q.shape[0]}, {q.shape[2]}, {q.shape[3]}, "
                         f"got {tuple(v.shape)}")
    if v.dtype != q.dtype or v.device != q.device:
        raise TypeError(f"{op}: v must share q's dtype and device, got {v.dtype} on {v.device} and "
                        f"{q.dtype} on {q.device}")
    if not has_kernel(q):
        return reference.criss_cross_attention(q, k, v)
    return torch.ops.attnkern.criss_cross_attention(q, k, v)[0]


# ---- autograd and fake kernels (gradients in csrc/criss_cross/criss_cross.h) -------------------

_ops = torch.ops.attnkern


def _affinity_backward(ctx, grad):
    q, k = ctx.saved_tensors
    return _ops.criss_cross_aggregate(grad, k), _ops.criss_cross_aggregate_transposed(grad, q)


def _aggregate_backward(ctx, grad):
    attn, v = ctx.saved_tensors
    return _ops.criss_cross_affinity(grad, v), _ops.criss_cross_aggregate_transposed(attn, grad)


def _aggregate_transposed_backward(ctx, grad):
    attn, x = ctx.saved_tensors
    return _ops.criss_cross_affinity(x, grad), _ops.criss_cross_aggregate(attn, grad)


def _attention_setup(ctx, inputs, output):
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs, out, lse)


def _attention_backward(ctx, grad, grad_lse):
    if grad is None:
        return None, None, None
    q, k, v, out, lse = ctx.saved_tensors
    return _ops.criss_cross_attention_backward(grad, q, k, v, out, lse)


torch.library.register_autograd("attnkern::criss_cross_attention", _attention_backward, setup_context=_attention_setup)
torch.library.register_autograd("attnkern::criss_cross_affinity", _affinity_backward, setup_context=save_inputs)
torch.library.register_autograd("attnkern::criss_cross_aggregate", _aggregate_backward, setup_context=save_inputs)
torch.library.register_autograd("attnkern::criss_cross_aggregate_transposed", _aggregate_transposed_backward,
                                setup_context=save_inputs)


@torch.library.register_fake("attnkern::criss_cross_affinity")
def _affinity_fake(q, k):
    B, _, H, W = q.shape
    return q.new_empty(B, H + W - 1, H, W)


@torch.library.register_fake("attnkern::criss_cross_aggregate")
def _aggregate_fake(attn, v):
    return v.new_empty(v.shape)


@torch.library.register_fake("attnkern::criss_cross_aggregate_transposed")
def _aggregate_transposed_fake(attn, x):
    return x.new_empty(x.shape)


@torch.library.register_fake("attnkern::criss_cross_attention")
def _attention_fake(q, k, v):
    B, _, H, W = v.shape
    return v.new_empty(v.shape), v.new_empty(B, H, W, dtype=accumulation_dtype(v.dtype))


@torch.library.register_fake("attnkern::criss_cross_attention_backward")
def _attention_backward_fake(grad, q, k, v, out, lse):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
