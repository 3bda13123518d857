"""Criss-cross attention ops (CCNet): affinity and aggregation over each pixel's row and column.

A pixel (h, w) attends to P = H + W − 1 positions, laid out along dim 1 of every [B, P, H, W] map as:
its row first, p = 0..W−1 → (h, p) (the pixel itself at p = w); then its column without itself,
p = W + i → (i, w) for i < h and (i + 1, w) for i ≥ h.
"""

import torch
from torch import Tensor

from .. import reference
from . import _plain
from ._cuda_routing import plain_on_cuda
from ._kernels import accumulation_dtype, check_tensor, run_check, save_inputs, use_kernel

__all__ = ["criss_cross_affinity", "criss_cross_aggregate", "criss_cross_attention"]

_ops = torch.ops.attnkern


def criss_cross_affinity(q: Tensor, k: Tensor) -> Tensor:
    """Energies of each pixel over its row and column.

    Args:
        q, k: [B, C, H, W], same shape, dtype and device; H and W not both 0.

    Returns:
        [B, H+W−1, H, W]: ``e[b, p, h, w] = Σ_c q[b, c, h, w]·k[b, c, position p of (h, w)]``, positions
        laid out as the module docstring says (row first, then the column without the pixel).

    Raises:
        TypeError: q or k is not a floating-point tensor, or they differ in dtype or device.
        ValueError: q or k is not [B, C, H, W], their shapes differ, or H = W = 0.

    Example:
        >>> attn = attnkern.ops.criss_cross_affinity(q, k).softmax(dim=1)
    """
    op = "criss_cross_affinity"
    check_tensor(q, "q", op)
    check_tensor(k, "k", op)
    if use_kernel(q, k):
        # CUDA: the routing table (attnkern.ops._cuda_routing), by the work B·C·H·W·(H+W−1)
        work = None
        if q.dim() == 4:
            B, C, H, W = q.shape
            work = B * C * H * W * (H + W - 1)
        if not plain_on_cuda("criss_cross_affinity", q, k, size=work):
            return _ops.criss_cross_affinity(q, k)
        run_check(_ops.criss_cross_affinity_check, q, k)
        return _plain.criss_cross_affinity(q, k)
    run_check(_ops.criss_cross_affinity_check, q, k)
    return reference.criss_cross_affinity(q, k)


def criss_cross_aggregate(attn: Tensor, v: Tensor) -> Tensor:
    """Aggregate values over each pixel's row and column.

    Args:
        attn: [B, H+W−1, H, W] weights (e.g. the softmax of :func:`criss_cross_affinity` over dim 1).
        v: [B, C, H, W], attn's dtype and device; H and W not both 0.

    Returns:
        [B, C, H, W]: ``out[b, c, h, w] = Σ_p attn[b, p, h, w]·v[b, c, position p of (h, w)]``.

    Raises:
        TypeError: attn or v is not a floating-point tensor, or they differ in dtype or device.
        ValueError: the shapes do not fit each other, or H = W = 0.
    """
    op = "criss_cross_aggregate"
    check_tensor(attn, "attn", op)
    check_tensor(v, "v", op)
    if use_kernel(attn, v):
        if not plain_on_cuda("criss_cross_aggregate", attn, v):
            return _ops.criss_cross_aggregate(attn, v)
        run_check(_ops.criss_cross_aggregate_check, attn, v)
        return _plain.criss_cross_aggregate(attn, v)  # CUDA: the routing table (attnkern.ops._cuda_routing)
    run_check(_ops.criss_cross_aggregate_check, attn, v)
    return reference.criss_cross_aggregate(attn, v)


def criss_cross_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Criss-cross attention in one op: each pixel's softmax over its row and column, applied to v.

    Equals ``criss_cross_aggregate(criss_cross_affinity(q, k).softmax(dim=1), v)``, saving only a per-pixel
    log-sum-exp [B, H, W] for the backward, which recomputes the weights from it. The CPU kernel keeps
    one image column or row of energies at a time (no [B, H+W−1, H, W] map); the CUDA one computes every
    row's and column's energies and outputs as batched cuBLAS products with one softmax kernel between,
    holding energies and weights of the maps' size while it runs.

    Args:
        q, k: [B, C, H, W]; v: [B, C', H, W]; one dtype and device; H and W not both 0.

    Returns:
        [B, C', H, W].

    Raises:
        TypeError: a tensor is not floating point, or they differ in dtype or device.
        ValueError: the shapes do not fit each other, or H = W = 0.
    """
    op = "criss_cross_attention"
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        check_tensor(t, name, op)
    if use_kernel(q, k, v):
        return _ops.criss_cross_attention(q, k, v)[0]
    run_check(_ops.criss_cross_attention_check, q, k, v)
    return reference.criss_cross_attention(q, k, v)


# ---- autograd and fake kernels (gradients in csrc/criss_cross/criss_cross.h) -------------------


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
