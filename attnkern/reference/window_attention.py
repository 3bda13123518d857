"""References of the window-attention family (Swin / SwinIR), written as SwinIR runs it: cyclic shift
(``torch.roll``), window partition, q·kᵀ + relative position bias + region mask, softmax, ·v, window
reverse, shift back.

Layouts: ``qkv`` [B, H, W, 3, heads, d] is the qkv Linear's output viewed in image layout; the output
[B, H, W, heads, d] is what the output projection reads. A window holds N = window_size² tokens in
row-major order; windows are numbered row-major over the (shifted) image. The geometry (partition,
bias index, shift mask) is :mod:`attnkern._window_geometry`'s, which the layers use too.
"""

from typing import Optional

import torch
from torch import Tensor

from .._window_geometry import relative_position_index, shift_region_mask, window_partition, window_reverse

__all__ = ["window_attention", "window_partition", "window_reverse", "relative_position_index", "shift_region_mask"]


def window_attention(qkv: Tensor, bias: Optional[Tensor], window_size: int, shift_size: int = 0,
                     mask: Optional[Tensor] = None, scale: Optional[float] = None) -> Tensor:
    """Shifted-window multi-head attention, as SwinIR computes it.

    Args:
        qkv: [B, H, W, 3, heads, d], H and W multiples of window_size.
        bias: [heads, N, N] relative position bias (gathered from the table), or None.
        window_size: side of a window; N = window_size².
        shift_size: cyclic shift (0 ≤ shift_size < window_size); > 0 adds SwinIR's region mask.
        mask: [nW, N, N] additive mask per window (windows of the shifted image), or None.
        scale: multiplies q; default d^-0.5.

    Returns:
        [B, H, W, heads, d].
    """
    B, H, W, _, heads, d = qkv.shape
    scale = d ** -0.5 if scale is None else scale
    if shift_size:
        qkv = torch.roll(qkv, shifts=(-shift_size, -shift_size), dims=(1, 2))
    windows = window_partition(qkv, window_size)  # [B·nW, N, 3, heads, d]
    q, k, v = windows.permute(2, 0, 3, 1, 4).unbind(0)  # [B·nW, heads, N, d]
    attn = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias.unsqueeze(0)
    N = window_size * window_size
    n_windows = (H // window_size) * (W // window_size)
    if shift_size:
        region_mask = shift_region_mask(H, W, window_size, shift_size, qkv.device, attn.dtype)
        attn = (attn.view(B, n_windows, heads, N, N) + region_mask[None, :, None]).view(B * n_windows, heads, N, N)
    if mask is not None:
        attn = (attn.view(B, n_windows, heads, N, N) + mask[None, :, None]).view(B * n_windows, heads, N, N)
    out = (attn.softmax(dim=-1) @ v).transpose(1, 2)  # [B·nW, N, heads, d]
    out = window_reverse(out, window_size, H, W, batch=B)
    if shift_size:
        out = torch.roll(out, shifts=(shift_size, shift_size), dims=(1, 2))
    return out
