"""CCNet's criss-cross attention on attnkern's fused criss-cross kernel."""

import torch
from torch import Tensor, nn

from .. import export
from ..ops.criss_cross import criss_cross_attention

__all__ = ["CrissCrossAttention"]


class CrissCrossAttention(nn.Module):
    """Criss-cross attention (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation",
    ICCV 2019), a drop-in for the published ``CrissCross`` / ``CrissCrossAttention`` module.

    Each pixel attends to the H + W − 1 positions of its row and column (itself once):
    out = gamma·(out_H + out_W) + x, with query/key 1×1 convolutions to in_dim // 8 channels and a
    value 1×1 convolution to in_dim channels. ``recurrence`` applies the block that many times with
    shared weights (CCNet uses 2), so every pixel sees the whole image.

    Parameter names match the published module (``query_conv``, ``key_conv``, ``value_conv``,
    ``gamma``), so its state_dict loads. ``gamma`` starts at 0, as published: the layer is then the
    identity until trained. Fixed from the published code: the −inf diagonal built with ``.cuda()``
    (which fails on the CPU and on a second GPU) — the kernel leaves the pixel out of its own column.

    mmcv's ``mmcv.ops.CrissCrossAttention`` (the same convolutions, one pass; ``gamma`` a ``Scale``
    module) loads too, also with ``strict=True``: its 0-dim ``gamma.scale`` entry is read as ``gamma``.

    Exports (ONNX, portable TorchScript / ``torch.export``, see :mod:`attnkern.export`) as CCNet's row
    and column products.

    Args:
        in_dim: input (and output) channels; at least 8.
        recurrence: how many times the block is applied.
    """

    def __init__(self, in_dim: int, recurrence: int = 1):
        super().__init__()
        if in_dim < 8:
            raise ValueError(f"CrissCrossAttention: in_dim must be >= 8 (queries have in_dim // 8 channels), got {in_dim}")
        if recurrence < 1:
            raise ValueError(f"CrissCrossAttention: recurrence must be >= 1, got {recurrence}")
        self.recurrence = recurrence
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"CrissCrossAttention: expected input [B, C, H, W], got shape {tuple(x.shape)}")
        attend = export.criss_cross_attention if export.is_portable() else criss_cross_attention
        for _ in range(self.recurrence):
            attended = attend(self.query_conv(x), self.key_conv(x), self.value_conv(x))
            x = self.gamma * attended + x
        return x

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # mmcv's module keeps gamma in a Scale module: a 0-dim "gamma.scale".
        mmcv_key = prefix + "gamma.scale"
        if mmcv_key in state_dict and prefix + "gamma" not in state_dict:
            state_dict[prefix + "gamma"] = state_dict.pop(mmcv_key).reshape(1)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
