"""Geometry of (shifted) window attention, Swin / SwinIR: how an image is cut into windows, which row
of the bias table each pair of tokens reads, and which pairs a shifted window masks.

Used by the layers (:mod:`attnkern.nn.swin`), the portable formulation (:mod:`attnkern.export`) and
the references (:mod:`attnkern.reference.window_attention`). It depends on torch alone, so every one
of them can import it.

A window holds N = window_size² tokens in row-major order; windows are numbered row-major over the
(shifted) image.
"""

from typing import Optional, Union

import torch
from torch import Tensor

__all__ = [
    "SHIFT_MASK_VALUE", "relative_position_index", "shift_regions", "shift_region_mask", "window_partition",
    "window_reverse",
]

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


def shift_regions(length: Union[int, Tensor], window_size: int, shift_size: int, device=None) -> Tensor:
    """[length] int64: the region of each position along one side of a shifted-window pass — 0 before
    −window_size, 1 from −window_size to −shift_size, 2 from −shift_size on (SwinIR's ``calculate_mask``
    slices). Arithmetic only, so that a traced ``length`` (an exporter's) stays traced."""
    position = torch.arange(length, device=device)
    return (position >= length - window_size).long() + (position >= length - shift_size).long()


def shift_region_mask(H: int, W: int, window_size: int, shift_size: int, device=None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """[nW, N, N]: SwinIR's mask of a shifted-window pass over an H×W image (``calculate_mask``): 0 between
    tokens of one region, −100 between regions (:func:`shift_regions` on each side, 3 × 3 regions)."""
    region = shift_regions(H, window_size, shift_size, device)[:, None] * 3 \
        + shift_regions(W, window_size, shift_size, device)[None, :]  # [H, W]
    windows = window_partition(region[None, :, :, None], window_size).squeeze(-1)  # [nW, N]
    different = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(different, SHIFT_MASK_VALUE)
