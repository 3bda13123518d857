"""Shifted-window multi-head attention with relative position bias (Swin / SwinIR), in image layout.

The kernels read q, k, v where the qkv Linear wrote them and write the output where the output
projection reads it: the cyclic shift, the window partition and SwinIR's region mask are index
arithmetic inside the kernel (csrc/window_attention/window_attention.h), and the N×N attention of a
window lives only while its block (CUDA) or task (CPU) runs.
"""

from typing import Optional

import torch
from torch import Tensor

from .. import reference
from . import _plain
from ._cuda_routing import plain_on_cuda
from ._kernels import accumulation_dtype, check_int, check_real, check_tensor, run_check, use_kernel

__all__ = ["window_attention"]

_ops = torch.ops.attnkern


def window_attention(qkv: Tensor, bias: Optional[Tensor], window_size: int, shift_size: int = 0,
                     mask: Optional[Tensor] = None, scale: Optional[float] = None) -> Tensor:
    """Shifted-window multi-head self-attention (Swin, Liu et al. 2021, eq. 4; SwinIR, Liang et al. 2021).

    Per window of N = window_size² tokens and per head: softmax(scale·q·kᵀ + bias + masks)·v. Equals
    SwinIR's roll → window_partition → attention → window_reverse → roll back (see
    :func:`attnkern.reference.window_attention`) without any of those copies, and keeps only a
    per-token log-sum-exp [B, H, W, heads] for the backward, which recomputes each window's attention.

    Args:
        qkv: [B, H, W, 3, heads, d]: the qkv Linear's output ``[B, H·W, 3·C]`` viewed as
            ``.view(B, H, W, 3, heads, C // heads)`` (no copy). H, W multiples of window_size.
        bias: [heads, N, N] relative position bias, qkv's dtype (gathered from the bias table by the
            layer, so the table's gradient flows through the gather), or None. Its gradient is
            reduced over windows deterministically.
        window_size: side of a (square) window.
        shift_size: cyclic shift, 0 ≤ shift_size < window_size. With shift_size > 0 the kernel applies
            SwinIR's region mask (−100 between tokens of different regions of a shifted window) itself.
        mask: optional extra additive mask [nW, N, N], windows numbered row-major over the shifted
            image (added for every sample and head); it receives no gradient.
        scale: multiplies q·kᵀ; default d^-0.5. Any real number (NaN and ±inf propagate as in the
            reference).

    Returns:
        [B, H, W, heads, d]: ``.reshape(B, H·W, C)`` feeds the output projection.

    Raises:
        TypeError: a tensor argument is not a floating-point tensor (bias: not qkv's dtype) or not on
            qkv's device; window_size or shift_size is not an int (a bool is not), scale not a number.
        ValueError: a shape does not fit (qkv [B, H, W, 3, heads, d] with heads, d ≥ 1, H and W
            multiples of window_size; bias [heads, N, N]; mask [nW, N, N]), window_size < 1, or
            shift_size outside [0, window_size).

    Example:
        >>> qkv = block.attn.qkv(x).view(B, H, W, 3, heads, C // heads)
        >>> out = window_attention(qkv, bias, window_size=8, shift_size=4).reshape(B, H * W, C)
    """
    op = "window_attention"
    check_tensor(qkv, "qkv", op)
    check_tensor(bias, "bias", op, optional=True)
    check_tensor(mask, "mask", op, optional=True)
    window_size = check_int(window_size, "window_size", op)
    shift_size = check_int(shift_size, "shift_size", op)
    if scale is None:
        d = qkv.shape[-1] if qkv.dim() > 0 else 0
        scale = d ** -0.5 if d > 0 else 1.0  # d = 0 (or another rank) is the op's ValueError below
    else:
        scale = check_real(scale, "scale", op)
    if use_kernel(qkv, bias, mask):
        size = max(window_size * window_size, qkv.shape[-1] if qkv.dim() > 0 else 0)  # the route's measure
        if not plain_on_cuda("window_attention", qkv, bias, mask, size=size):
            return _ops.window_attention(qkv, bias, mask, window_size, shift_size, scale)[0]
        run_check(_ops.window_attention_check, qkv, bias, mask, window_size, shift_size)
        # CUDA: SDPA, as the routing table says (attnkern.ops._cuda_routing)
        return _plain.window_attention(qkv, bias, window_size, shift_size, mask, scale)
    run_check(_ops.window_attention_check, qkv, bias, mask, window_size, shift_size)
    return reference.window_attention(qkv, bias, window_size, shift_size, mask, scale)


# ---- autograd and fake kernels (gradients in csrc/window_attention/window_attention.h) ----------

def _setup(ctx, inputs, output):
    qkv, bias, mask, window_size, shift_size, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)
    ctx.geometry = (window_size, shift_size, scale)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(qkv, bias, mask, out, lse)


def _backward(ctx, grad, grad_lse):
    if grad is None:
        return None, None, None, None, None, None
    qkv, bias, mask, out, lse = ctx.saved_tensors
    grad_qkv, grad_bias = _ops.window_attention_backward(grad, qkv, bias, mask, out, lse, *ctx.geometry)
    return grad_qkv, (grad_bias if ctx.has_bias else None), None, None, None, None


torch.library.register_autograd("attnkern::window_attention", _backward, setup_context=_setup)


@torch.library.register_fake("attnkern::window_attention")
def _fake(qkv, bias, mask, window_size, shift_size, scale):
    B, H, W, _, heads, d = qkv.shape
    return qkv.new_empty(B, H, W, heads, d), qkv.new_empty(B, H, W, heads, dtype=accumulation_dtype(qkv.dtype))


@torch.library.register_fake("attnkern::window_attention_backward")
def _backward_fake(grad, qkv, bias, mask, out, lse, window_size, shift_size, scale):
    return qkv.new_empty(qkv.shape), (bias.new_empty(bias.shape) if bias is not None else qkv.new_empty(0))
