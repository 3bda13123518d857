"""Padding and tiling as the official SwinIR test script (main_test_swinir.py) runs a model on an image."""

import itertools
import sys
from typing import Callable, List, Optional

import torch
from torch import Tensor

__all__ = ["PAD_MODES", "official_pad", "pad_to_multiple", "tile_starts", "tiled_forward"]

PAD_MODES = ("official", "minimal")


def official_pad(img: Tensor, window_size: int, mode: str = "official") -> Tensor:
    """Pads img [..., H, W] at the bottom/right before the model runs, as the official test script
    (main_test_swinir.py) does.

    ``mode="official"`` (the script's rule): always (H // window_size + 1)·window_size − H rows and the
    same for the columns — a whole window even when H is already a multiple (a 48×40 image is run at
    56×48), which changes the outputs near the bottom/right border compared with no padding.
    ``mode="minimal"``: only up to the next multiple ((−H) mod window_size; nothing for multiples).

    The pad is the mirror image including the edge row (``cat([img, img.flip(-2)])``, as the script),
    taken once: an image shorter than its pad (H < window_size / 2) stays short of the multiple, and
    the model's own reflect padding adds the rest — as in the script.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {PAD_MODES}, got {mode!r}")
    h, w = img.shape[-2:]
    if mode == "official":
        pad_h, pad_w = (h // window_size + 1) * window_size - h, (w // window_size + 1) * window_size - w
    else:
        pad_h, pad_w = (-h) % window_size, (-w) % window_size
    img = torch.cat([img, img.flip(-2)], dim=-2)[..., :h + pad_h, :]
    return torch.cat([img, img.flip(-1)], dim=-1)[..., :w + pad_w]


def pad_to_multiple(img: Tensor, multiple: int) -> Tensor:
    """Pads img [..., H, W] at the bottom/right to the next multiples of ``multiple`` with its mirror
    image (edge row included; repeated for images shorter than the pad), so the result is always a
    multiple. (The command line pads with :func:`official_pad`.)"""
    h, w = img.shape[-2:]
    target_h, target_w = h + (-h) % multiple, w + (-w) % multiple
    while img.shape[-2] < target_h:
        img = torch.cat([img, img.flip(-2)], dim=-2)
    while img.shape[-1] < target_w:
        img = torch.cat([img, img.flip(-1)], dim=-1)
    return img[..., :target_h, :target_w]


def _progress_bar(done: int, total: int, stream=None, width: int = 30) -> None:
    stream = sys.stderr if stream is None else stream
    filled = width * done // total
    stream.write(f"\rtiles [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        stream.write("\n")
    stream.flush()


def tile_starts(size: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` with stride tile − overlap (the last
    tile ends at the edge)."""
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def tiled_forward(model: Callable[[Tensor], Tensor], img: Tensor, scale: int, tile: Optional[int] = None,
                  tile_overlap: int = 32, progress: bool = False) -> Tensor:
    """model(img) computed tile by tile, the official test script's procedure: tiles of
    t = min(tile, H, W) pixels starting at ``range(0, H − t, t − tile_overlap)`` and at H − t (the same
    across W), each tile's output added into a sum E and a count W, the result E / W — each output pixel
    the mean of the tiles covering it. (The sum is kept in float32 where the script keeps the image's
    dtype: the same for float32 images, more accurate for float16.)

    Args:
        model: maps [B, C, h, w] to [B, C', h·scale, w·scale].
        img: [B, C, H, W].
        scale: the model's upscale factor.
        tile: tile side, or None for one pass over the whole image. A multiple of the window avoids
            padding inside the model.
        tile_overlap: overlap of neighbouring tiles, 0 ≤ tile_overlap < tile.
        progress: draw a progress bar over the tiles on stderr.

    Returns:
        [B, C', H·scale, W·scale], float32 when tiled.
    """
    if tile is None:
        return model(img)
    if img.dim() != 4:
        raise ValueError(f"tiled_forward: expected an image [B, C, H, W], got shape {tuple(img.shape)}")
    b, _, h, w = img.shape
    if tile < 1:
        raise ValueError(f"tiled_forward: tile must be >= 1, got {tile}")
    tile = min(tile, h, w)
    if not 0 <= tile_overlap < tile:
        raise ValueError(f"tiled_forward: tile_overlap must be in [0, tile) = [0, {tile}), got {tile_overlap}")
    positions = list(itertools.product(tile_starts(h, tile, tile_overlap), tile_starts(w, tile, tile_overlap)))
    out: Optional[Tensor] = None
    weight = torch.zeros(1, 1, h * scale, w * scale, device=img.device)
    for i, (y, x) in enumerate(positions):
        patch = model(img[..., y:y + tile, x:x + tile])
        if out is None:
            out = torch.zeros(b, patch.shape[1], h * scale, w * scale, device=img.device)
        out[..., y * scale:(y + tile) * scale, x * scale:(x + tile) * scale] += patch.float()
        weight[..., y * scale:(y + tile) * scale, x * scale:(x + tile) * scale] += 1
        if progress:
            _progress_bar(i + 1, len(positions))
    assert out is not None
    return out / weight
