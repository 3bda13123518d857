"""SAN's second-order channel attention (SOCA) on attnkern's covpool kernels."""

import torch
from torch import Tensor, nn

from .. import export
from ..ops.covpool import covpool, sqrtm_newton_schulz

__all__ = ["SOCA"]


def center_crop(x: Tensor, max_size: int) -> Tensor:
    """The central max_size × max_size window of x [B, C, H, W] (each side cropped only when longer)."""
    h, w = x.shape[-2:]
    top = max(h - max_size, 0) // 2
    left = max(w - max_size, 0) // 2
    return x[..., top:top + min(h, max_size), left:left + min(w, max_size)]


class SOCA(nn.Module):
    """Second-order channel attention (Dai et al., "Second-order Attention Network for Single Image
    Super-Resolution", CVPR 2019), a drop-in for SAN's ``SOCA``.

    y = conv_du(mean₁(sqrtm(cov(crop(x))))) and the output is y·x: the channel covariance of the
    (central ≤ 1000×1000 crop of the) input, its matrix square root by 5 Newton–Schulz iterations,
    the mean over dim 1, then conv_du (1×1 conv C→C/r, ReLU, 1×1 conv C/r→C, Sigmoid).

    Parameter names match SAN (``conv_du.0``, ``conv_du.2``), so a SAN state_dict loads. Fixed from
    the published code: the crop takes each side on its own, so a side of exactly 1000 no longer
    falls into the both-sides branch with a negative offset; an input with zero covariance (constant
    per channel) gives y = conv_du(0) instead of NaN. SAN's unused ``max_pool`` (no parameters) is
    omitted.

    Exports (ONNX, TorchScript, ``torch.export``, see :mod:`attnkern.export`) at any input size: with
    traced sizes the crop is a gather whose bounds follow the size (over 1000 pixels too).

    Args:
        channel: number of input channels C.
        reduction: channel reduction r of the gating MLP (C // r hidden channels).
    """

    crop_size = 1000
    iters = 5

    def __init__(self, channel: int, reduction: int = 8):
        super().__init__()
        if channel // reduction < 1:
            raise ValueError(f"SOCA: channel // reduction must be >= 1, got channel={channel}, reduction={reduction}")
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"SOCA: expected input [B, C, H, W], got shape {tuple(x.shape)}")
        batch, channels = x.shape[:2]
        if export.is_traced_size(*x.shape[2:]):
            cov = covpool(export.center_crop(x, self.crop_size))  # the crop follows the traced size
        else:
            cov = covpool(center_crop(x, self.crop_size))
        root = sqrtm_newton_schulz(cov, self.iters)
        y = torch.mean(root, 1).view(batch, channels, 1, 1)
        return self.conv_du(y) * x
