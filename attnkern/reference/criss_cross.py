"""References of the criss-cross family (CCNet).

A pixel (h, w) attends to P = H + W − 1 positions: its row (h, 0..W−1), itself included, then its
column without itself (rows 0..H−1 except h, in order). Maps over those positions are [B, P, H, W].
"""

import torch
from torch import Tensor


def criss_cross_positions(H: int, W: int, device=None) -> Tensor:
    """[P, H, W] int64: the flat offset (y·W + x) of each pixel's P = H + W − 1 positions (an image
    without pixels, H or W = 0, has an empty map; H = W = 0 has none: P would be −1)."""
    if H == 0 or W == 0:
        return torch.empty(H + W - 1, H, W, dtype=torch.int64, device=device)
    h = torch.arange(H, device=device).view(1, H, 1)
    w = torch.arange(W, device=device).view(1, 1, W)
    row = h * W + torch.arange(W, device=device).view(W, 1, 1)  # [W, H, 1]: (h, p)
    i = torch.arange(H - 1, device=device).view(H - 1, 1, 1)
    col = torch.where(i < h, i, i + 1) * W + w  # [H−1, H, W]: (rows other than h, w)
    return torch.cat([row.expand(W, H, W), col], dim=0)


def _gather(x: Tensor) -> Tensor:
    """x [B, C, H, W] → [B, C, P, H, W]: x at each pixel's positions."""
    B, C, H, W = x.shape
    index = criss_cross_positions(H, W, x.device)
    return x.flatten(2)[:, :, index.flatten()].view(B, C, H + W - 1, H, W)


def criss_cross_affinity(q: Tensor, k: Tensor) -> Tensor:
    """energy[b, p, h, w] = Σ_c q[b, c, h, w]·k[b, c, position p of (h, w)] → [B, H+W−1, H, W]."""
    return (q.unsqueeze(2) * _gather(k)).sum(1)


def criss_cross_aggregate(attn: Tensor, v: Tensor) -> Tensor:
    """out[b, c, h, w] = Σ_p attn[b, p, h, w]·v[b, c, position p of (h, w)] → [B, C, H, W]."""
    return (attn.unsqueeze(1) * _gather(v)).sum(2)


def criss_cross_aggregate_transposed(attn: Tensor, x: Tensor) -> Tensor:
    """The adjoint of criss_cross_aggregate in v: y[b, c, position p of (h, w)] += attn[b, p, h, w]·x[b, c, h, w]."""
    B, C, H, W = x.shape
    index = criss_cross_positions(H, W, x.device).flatten()
    contributions = (attn.unsqueeze(1) * x.unsqueeze(2)).flatten(2)  # [B, C, P·H·W]
    return torch.zeros(B, C, H * W, dtype=x.dtype, device=x.device).index_add(2, index, contributions).view(B, C, H, W)


def criss_cross_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Criss-cross attention: softmax of the affinity over the H + W − 1 positions, aggregated over v."""
    return criss_cross_aggregate(criss_cross_affinity(q, k).softmax(dim=1), v)
