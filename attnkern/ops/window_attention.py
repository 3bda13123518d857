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
from ._kernels import accumulation_dtype, check_floating, has_kernel

__all__ = ["window_attention"]


def _check(qkv: Tensor, bias: Optional[Tensor], window_size: int, shift_size: int, mask: Optional[Tensor]) -> None:
    op = "window_attention"
    check_floating(qkv, "qkv", op)
    if qkv.dim() != 6 or qkv.shape[3] != 3:
        raise ValueError(f"{op}: qkv must be [B, H, W, 3, heads, d] (the qkv Linear's output viewed in image layout), "
                         f"got shape {tuple(qkv.shape)}")
    if not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f"{op}: window_size must be a positive int, got {window_size!r}")
    if not isinstance(shift_size, int) or not 0 <= shift_size < window_size:
        raise ValueError(f"{op}: shift_size must be an int in [0, window_size) = [0, {window_size}), got {shift_size!r}")
    B, H, W, _, heads, d = qkv.shape
    if H % window_size or W % window_size:
        raise ValueError(f"{op}: H and W must be multiples of window_size {window_size}, got H = {H}, W = {W} "
                         "(pad the image first; attnkern.nn.SwinTransformerBlock does)")
    N = window_size * window_size
    if bias is not None:
        check_floating(bias, "bias", op)
        if tuple(bias.shape) != (heads, N, N):
            raise ValueError(f"{op}: bias must be [heads, N, N] = [{heads}, {N}, {N}], got {tuple(bias.shape)}")
        if bias.dtype != qkv.dtype or bias.device != qkv.device:
            raise TypeError(f"{op}: bias must share qkv's dtype and device, got {bias.dtype} on {bias.device} and "
                            f"{qkv.dtype} on {qkv.device}")
    if mask is not None:
        check_floating(mask, "mask", op)
        n_windows = (H // window_size) * (W // window_size)
        if tuple(mask.shape) != (n_windows, N, N):
            raise ValueError(f"{op}: mask must be [nW, N, N] = [{n_windows}, {N}, {N}], got {tuple(mask.shape)}")
        if mask.device != qkv.device:
            raise TypeError(f"{op}: mask must be on qkv's device {qkv.device}, got {mask.device}")


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
        scale: multiplies q·kᵀ; default d^-0.5.

    Returns:
        [B, H, W, heads, d]: ``.reshape(B, H·W, C)`` feeds the output projection.

    Example:
        >>> qkv = block.attn.qkv(x).view(B, H, W, 3, heads, C // heads)
        >>> out = window_attention(qkv, bias, window_size=8, shift_size=4).reshape(B, H * W, C)
    """
    _check(qkv, bias, window_size, shift_size, mask)
    scale = qkv.shape[-1] ** -0.5 if scale is None else float(scale)
    if not has_kernel(qkv):
        return reference.window_attention(qkv, bias, window_size, shift_size, mask, scale)
    return torch.ops.attnkern.window_attention(qkv, bias, mask, window_size, shift_size, scale)[0]


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
    grad_qkv, grad_bias = torch.ops.attnkern.window_attention_backward(grad, qkv, bias, mask, out, lse, *ctx.geometry)
    return grad_qkv, (grad_bias if ctx.has_bias else None), None, None, None, None


torch.library.register_autograd("attnkern::window_attention", _backward, setup_context=_setup)


@torch.library.register_fake("attnkern::window_attention")
def _fake(qkv, bias, mask, window_size, shift_size, scale):
    B, H, W, _, heads, d = qkv.shape
    return qkv.new_empty(B, H, W, heads, d), qkv.new_empty(B, H, W, heads, dtype=accumulation_dtype(qkv.dtype))


@torch.library.register_fake("attnkern::window_attention_backward")
def _backward_fake(grad, qkv, bias, mask, out, lse, window_size, shift_size, scale):
    return qkv.new_empty(qkv.shape), (bias.new_empty(bias.shape) if bias is not None else qkv.new_empty(0))
