"""References of the window-attention family (Swin / SwinIR), written as SwinIR runs it: cyclic shift
(``torch.roll``), window partition, q·kᵀ + relative position bias + region mask, softmax, ·v, window
reverse, shift back.

Layouts: ``qkv`` [B, H, W, 3, heads, d] is the qkv Linear's output viewed in image layout; the output
[B, H, W, heads, d] is what the output projection reads. A window holds N = window_size² tokens in
row-major order; windows are numbered row-major over the (shifted) image.
"""

from typing import Optional

import torch
from torch import Tensor

# SwinIR's additive mask between tokens of different regions of a shifted window (not −inf).
SHIFT_MASK_VALUE = -100.0


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """[B, H, W, *rest] → [B·nW, N, *rest], windows row-major, tokens row-major within a window."""
    B, H, W = x.shape[:3]
    rest = x.shape[3:]
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, *rest)
    x = x.transpose(2, 3)
    return x.reshape(B * (H // window_size) * (W // window_size), window_size * window_size, *rest)


def window_reverse(windows: Tensor, window_size: int, H: int, W: int, batch: Optional[int] = None) -> Tensor:
    """The inverse of :func:`window_partition`: [B·nW, N, *rest] → [B, H, W, *rest]. ``batch`` is B; by
    default B·nW / nW (SwinIR's rule), which an image without windows (H or W = 0) needs given."""
    rest = windows.shape[2:]
    B = windows.shape[0] // ((H // window_size) * (W // window_size)) if batch is None else batch
    x = windows.reshape(B, H // window_size, W // window_size, window_size, window_size, *rest)
    return x.transpose(2, 3).reshape(B, H, W, *rest)


def relative_position_index(window_size: int, device=None) -> Tensor:
    """[N, N] int64: the row of the (2·ws − 1)² bias table for each pair of tokens of a window (Swin, eq. 4:
    B[i, j] = table[(y_i − y_j + ws − 1)·(2·ws − 1) + (x_i − x_j + ws − 1)])."""
    coords = torch.arange(window_size, device=device)
    y = coords.repeat_interleave(window_size)
    x = coords.repeat(window_size)
    dy = y[:, None] - y[None, :] + window_size - 1
    dx = x[:, None] - x[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx


def shift_region_mask(H: int, W: int, window_size: int, shift_size: int, device=None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """[nW, N, N]: SwinIR's mask of a shifted-window pass over an H×W image (``calculate_mask``): 0 between
    tokens of one region, −100 between regions. Regions split each axis at −window_size and −shift_size."""
    def regions(length: int) -> Tensor:
        pos = torch.arange(length, device=device)
        return (pos >= length - window_size).long() + (pos >= length - shift_size).long()

    region = regions(H)[:, None] * 3 + regions(W)[None, :]  # [H, W]
    windows = window_partition(region[None, :, :, None], window_size).squeeze(-1)  # [nW, N]
    different = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(different, SHIFT_MASK_VALUE)


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
