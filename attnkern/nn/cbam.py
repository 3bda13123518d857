"""CBAM: channel then spatial attention, on attnkern's gating kernels."""

import torch
from torch import Tensor, nn

from ..ops.gating import apply_gates, channel_pool, spatial_pool
from ._common import check_input, common_dtype, positive_int

__all__ = ["ChannelAttention", "SpatialAttention", "CBAM"]


class ChannelAttention(nn.Module):
    """CBAM's channel attention map (Woo et al., "CBAM: Convolutional Block Attention Module", ECCV
    2018), a drop-in for the published ``ChannelAttention`` (parameters ``fc1``, ``fc2``):

        σ(MLP(avgpool_hw x) + MLP(maxpool_hw x)),  MLP = fc2 ∘ ReLU ∘ fc1 (1×1 convs, C → C/ratio → C)

    Returns the map, [B, C, 1, 1], as published. Both poolings are one pass (``channel_pool``) and the
    MLP runs once on the two descriptors stacked. Where the maximum is tied, its gradient is split
    evenly between the tied positions (``torch.amax``); the published ``AdaptiveMaxPool2d`` gives it
    all to one of them.

    Args:
        in_planes: channels C.
        ratio: reduction; C // ratio ≥ 1.
    """

    def __init__(self, in_planes: int, ratio: int = 16):
        super().__init__()
        self.in_planes = positive_int(in_planes, "in_planes", "ChannelAttention")
        positive_int(ratio, "ratio", "ChannelAttention")
        if in_planes // ratio < 1:
            raise ValueError(f"ChannelAttention: in_planes // ratio must be >= 1, got {in_planes} // {ratio}")
        self.fc1 = nn.Conv2d(in_planes, in_planes // ratio, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(in_planes // ratio, in_planes, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def gate(self, x: Tensor) -> Tensor:
        """The map as [B, C]."""
        check_input(x, "ChannelAttention", self.in_planes)
        if x.shape[2] * x.shape[3] == 0:
            raise ValueError(f"ChannelAttention: input needs at least one position, got shape {tuple(x.shape)}")
        b = x.shape[0]
        mean, mx = channel_pool(x)
        descriptors = self.fc2(self.relu1(self.fc1(torch.cat([mean, mx])[:, :, None, None])))  # [2B, C, 1, 1]
        return self.sigmoid(descriptors[:b] + descriptors[b:]).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.gate(x)[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM's spatial attention map, a drop-in for the published ``SpatialAttention`` (``conv1``):

        σ(conv_k([mean_c x; max_c x])),  a 2 → 1 k×k convolution (k = 3 or 7, same padding)

    Returns the map, [B, 1, H, W], as published; the two poolings are one pass (``spatial_pool``).
    Ties of the channel maximum share its gradient (``torch.amax``), where ``torch.max`` gives it to
    one channel. The published ``assert`` on kernel_size is a ValueError here.

    Args:
        kernel_size: 3 or 7.
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size not in (3, 7):
            raise ValueError(f"SpatialAttention: kernel_size must be 3 or 7, got {kernel_size!r}")
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def gate_from_pooled(self, pooled: Tensor) -> Tensor:
        return self.sigmoid(self.conv1(pooled))

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "SpatialAttention")
        if x.shape[1] == 0:
            raise ValueError(f"SpatialAttention: input needs at least one channel, got shape {tuple(x.shape)}")
        return self.gate_from_pooled(spatial_pool(x))


class CBAM(nn.Module):
    """Convolutional block attention module: out = x' · SA(x'), x' = x · CA(x), a drop-in for the
    published ``CBAM`` (sub-modules ``ca``, ``sa``).

    Three gating ops instead of the published chain of eight full-size operations: ``channel_pool``
    (mean and max over H·W), ``spatial_pool`` of x · CA without storing x' (mean and max over C), and
    ``apply_gates`` (x · CA · SA in one product); their backward passes are fused likewise, and x'
    is never stored for the backward (about half the seed's peak memory).

    Args:
        in_planes: channels C.
        ratio: channel-attention reduction; C // ratio ≥ 1.
        kernel_size: spatial-attention kernel, 3 or 7.
    """

    def __init__(self, in_planes: int, ratio: int = 16, kernel_size: int = 7):
        super().__init__()
        self.ca = ChannelAttention(in_planes, ratio)
        self.sa = SpatialAttention(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        x, channel_gate = common_dtype(x, self.ca.gate(x))
        pixel_gate = self.sa.gate_from_pooled(spatial_pool(x, channel_gate))
        x, pixel_gate = common_dtype(x, pixel_gate)
        return apply_gates(x, channel_gate.to(x.dtype), pixel_gate)
