"""References of the gating family: the poolings and gates of SE / CBAM-style attention, and SGE's group gate.

Maxima follow ``torch.amax``: a NaN wins, and the gradient is split evenly between tied maxima.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor


def channel_pool(x: Tensor) -> Tuple[Tensor, Tensor]:
    """x [B, C, H, W] → (mean, max) over the H·W positions of each channel, each [B, C]."""
    return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


def spatial_pool(x: Tensor, gate: Optional[Tensor] = None) -> Tensor:
    """[mean_c y; max_c y] for y = x · gate[:, :, None, None] (y = x without a gate): [B, 2, H, W]."""
    y = x if gate is None else x * gate[:, :, None, None]
    return torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)


def apply_gates(x: Tensor, channel_gate: Optional[Tensor] = None, pixel_gate: Optional[Tensor] = None) -> Tensor:
    """x · channel_gate[b, c] · pixel_gate[b, 0, h, w]; channel_gate [B, C], pixel_gate [B, 1, H, W],
    either may be None."""
    if channel_gate is not None:
        x = x * channel_gate[:, :, None, None]
    if pixel_gate is not None:
        x = x * pixel_gate
    return x


def group_enhance(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    """SGE (spatial group-wise enhance) on x [B, C, H, W] with weight, bias [G], G = groups dividing C: per
    sample and group, s = Σ_c x·mean_hw(x) at every position, ĉ = (s − mean(s)) / (std(s) + 1e-5) over the
    positions (std unbiased; ĉ = 0 at a single position), out = x · sigmoid(weight·ĉ + bias) — the SGE
    authors' layer."""
    b, c, h, w = x.shape
    xg = x.reshape(b * groups, c // groups, h * w)
    similarity = (xg * xg.mean(dim=2, keepdim=True)).sum(dim=1)  # [B·G, H·W]
    centred = similarity - similarity.mean(dim=1, keepdim=True)
    if h * w > 1:
        normalised = centred / (centred.std(dim=1, keepdim=True) + 1e-5)
    else:
        normalised = centred  # zero: one position has no spread
    gate = torch.sigmoid(normalised.view(b, groups, h * w) * weight.view(1, groups, 1) + bias.view(1, groups, 1))
    return (xg * gate.view(b * groups, 1, h * w)).view(b, c, h, w)
