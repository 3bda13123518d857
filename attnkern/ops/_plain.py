"""The plain cuBLAS/cuDNN/SDPA formulations that ops run on CUDA where the routing table
(:mod:`attnkern.ops._cuda_routing`) says their kernel loses to them — the formulations the performance
model (``benchmarks/perf_model.py``) times as "plain", and the benchmarks' plain rows.

Each gives the op's values and, through autograd, its gradients (its conventions included: the
criss-cross self position counted once, SwinIR's shift mask, DRConv's straight-through gradient).
Where a reference (``attnkern.reference``) already is that formulation, it is used as it is. Half
types (float16, bfloat16) keep the kernels' float32 accumulation where rounding would otherwise show:
the criss-cross energies and softmax are computed in float32 and the result cast back. An empty input
takes the reference (same values, no empty-tensor corner cases of einsum/SDPA). ``criss_cross_attention``'s
formulation is no longer routed to (its CUDA kernel wins at every benchmark shape); it stays as the
benchmark's einsum row.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reference
from ..reference.covpool import sqrtm_newton_schulz  # a loop of bmm in the input dtype: as is
from ..reference.region_conv import dynamic_region_conv  # every region's grouped conv2d + gather: as is

__all__ = [
    "criss_cross_affinity", "criss_cross_aggregate", "criss_cross_attention", "window_attention",
    "dynamic_region_conv", "sqrtm_newton_schulz",
]

_HALF = (torch.float16, torch.bfloat16)


def _accumulate(t: Tensor) -> Tensor:
    return t.float() if t.dtype in _HALF else t


def _column_index(H: int, device) -> Tensor:
    """[H−1, H]: row i of pixel row h's column positions (the column without the pixel: i, or i + 1 from h on)."""
    i = torch.arange(H - 1, device=device).view(H - 1, 1)
    h = torch.arange(H, device=device).view(1, H)
    return torch.where(i < h, i, i + 1)


def _empty(*tensors: Tensor) -> bool:
    return any(t.numel() == 0 for t in tensors)


def criss_cross_affinity(q: Tensor, k: Tensor) -> Tensor:
    """[B, H+W−1, H, W] energies as two batched products: the row (W positions, the pixel included), the
    column (H positions) of which a gather keeps the H − 1 without the pixel."""
    if _empty(q, k):
        return reference.criss_cross_affinity(q, k)
    B, _, H, W = q.shape
    row = torch.einsum("bchw,bchx->bxhw", q, k)  # [B, W, H, W]
    column = torch.einsum("bchw,bcyw->byhw", q, k)  # [B, H, H, W]
    index = _column_index(H, q.device).view(1, H - 1, H, 1).expand(B, H - 1, H, W)
    return torch.cat([row, column.gather(1, index)], dim=1)


def criss_cross_aggregate(attn: Tensor, v: Tensor) -> Tensor:
    """Σ_p attn·v over each pixel's row and column as two batched products: the row's W weights as
    they are, the column's H − 1 scattered into H with a zero at the pixel."""
    if _empty(attn, v):
        return reference.criss_cross_aggregate(attn, v)
    B, _, H, W = v.shape
    index = _column_index(H, v.device).view(1, H - 1, H, 1).expand(B, H - 1, H, W)
    column = attn.new_zeros(B, H, H, W).scatter(1, index, attn[:, W:])  # [B, y, H, W], 0 at y = h
    return torch.einsum("bxhw,bchx->bchw", attn[:, :W], v) + torch.einsum("byhw,bcyw->bchw", column, v)


def criss_cross_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Criss-cross attention as einsum products (what mmcv switched to): column energies with −inf at the
    pixel itself (counted once, in its row), row energies, one softmax over the H + W − 1 positions,
    then the two weighted sums. Energies and softmax in float32 for half types."""
    if _empty(q, k, v):
        return reference.criss_cross_attention(q, k, v)
    H = q.shape[2]
    q, k = _accumulate(q), _accumulate(k)
    energy_h = torch.einsum("bchw,bcyw->bhwy", q, k)
    diagonal = torch.eye(H, dtype=torch.bool, device=q.device).view(1, H, 1, H)
    energy_h = energy_h.masked_fill(diagonal, float("-inf"))
    energy_w = torch.einsum("bchw,bchx->bhwx", q, k)
    attention = torch.cat([energy_h, energy_w], dim=3).softmax(dim=3).to(v.dtype)
    return (torch.einsum("bhwy,bcyw->bchw", attention[..., :H], v)
            + torch.einsum("bhwx,bchx->bchw", attention[..., H:], v))


def window_attention(qkv: Tensor, bias: Optional[Tensor], window_size: int, shift_size: int = 0,
                     mask: Optional[Tensor] = None, scale: Optional[float] = None) -> Tensor:
    """Shifted-window attention through ``F.scaled_dot_product_attention``: roll, window partition, SDPA
    with the bias, SwinIR's shift mask and the extra mask added into one attn_mask (expanded over the
    batch when only the bias is present: no copy; otherwise [B·nW, heads, N, N], as the benchmark's
    SDPA row), window reverse, roll back. Same arguments and result as the op."""
    if _empty(qkv):
        return reference.window_attention(qkv, bias, window_size, shift_size, mask, scale)
    B, H, W, _, heads, d = qkv.shape
    ws, N = window_size, window_size * window_size
    n_windows = (H // ws) * (W // ws)
    scale = d ** -0.5 if scale is None else scale
    if shift_size:
        qkv = torch.roll(qkv, shifts=(-shift_size, -shift_size), dims=(1, 2))
    q, k, v = reference.window_partition(qkv, ws).permute(2, 0, 3, 1, 4).unbind(0)  # [B·nW, heads, N, d]
    if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
        # SDPA's math backend scales q and k by √scale each: a negative or non-finite scale goes on q.
        q, scale = q * scale, 1.0
    per_window = None  # [nW, N, N]: the same for every sample and head
    if shift_size:
        per_window = reference.shift_region_mask(H, W, ws, shift_size, qkv.device, qkv.dtype)
    if mask is not None:
        mask = mask.to(qkv.dtype)
        per_window = mask if per_window is None else per_window + mask
    attn_mask = None if bias is None else bias.unsqueeze(0)  # [1, heads, N, N]
    if per_window is not None:
        per_window = per_window.unsqueeze(1) if attn_mask is None else attn_mask + per_window.unsqueeze(1)
        attn_mask = per_window.unsqueeze(0).expand(B, -1, -1, -1, -1).reshape(B * n_windows, -1, N, N)
    elif attn_mask is not None:
        attn_mask = attn_mask.expand(B * n_windows, -1, -1, -1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)  # [B·nW, heads, N, d]
    out = reference.window_reverse(out.transpose(1, 2), ws, H, W, batch=B)
    if shift_size:
        out = torch.roll(out, shifts=(shift_size, shift_size), dims=(1, 2))
    return out
