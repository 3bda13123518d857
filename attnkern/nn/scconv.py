"""Self-calibrated convolution (SCNet)."""

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_input, positive_int

__all__ = ["SCConv"]


class SCConv(nn.Module):
    """Self-calibrated convolution (Liu et al., "Improving Convolutional Networks with
    Self-Calibrated Convolutions", CVPR 2020), a drop-in for the published ``SCConv`` (``k2``, ``k3``,
    ``k4``, each a 3×3 convolution and a norm layer; ``k2`` after an r×r average pooling):

        out = k4(k3(x) · σ(x + up(k2(avgpool_r(x)))))

    ``up`` is nearest-neighbour resizing to x's size. The published code has every argument
    required; the defaults here are SCNet's (stride 1, padding = dilation = 1, pooling_r 4,
    BatchNorm). The shape constraints the published code leaves to a broadcasting error are checked:
    ``planes == inplanes`` (x is added to k2's output), ``padding == dilation`` (k3 keeps x's size),
    and the input must be at least pooling_r × pooling_r.

    Args:
        inplanes, planes: input and output channels (equal).
        stride: stride of k4 (the output's downsampling).
        padding, dilation: of the three 3×3 convolutions (equal).
        groups: groups of the three convolutions.
        pooling_r: k2's average-pooling factor.
        norm_layer: callable ``norm_layer(planes) -> nn.Module``.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, padding: int = 1, dilation: int = 1,
                 groups: int = 1, pooling_r: int = 4, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        layer = "SCConv"
        for value, name in ((inplanes, "inplanes"), (planes, "planes"), (stride, "stride"), (dilation, "dilation"),
                            (groups, "groups"), (pooling_r, "pooling_r")):
            positive_int(value, name, layer)
        positive_int(padding, "padding", layer, minimum=0)
        if planes != inplanes:
            raise ValueError(f"{layer}: planes must equal inplanes (x is added to k2's output), got inplanes="
                             f"{inplanes}, planes={planes}")
        if padding != dilation:
            raise ValueError(f"{layer}: padding must equal dilation (k3 must keep the input's size), got padding="
                             f"{padding}, dilation={dilation}")
        if inplanes % groups:
            raise ValueError(f"{layer}: inplanes must be divisible by groups, got {inplanes} and {groups}")
        self.inplanes, self.pooling_r = inplanes, pooling_r

        def conv(s: int) -> nn.Conv2d:
            return nn.Conv2d(inplanes, planes, kernel_size=3, stride=s, padding=padding, dilation=dilation,
                             groups=groups, bias=False)

        self.k2 = nn.Sequential(nn.AvgPool2d(kernel_size=pooling_r, stride=pooling_r), conv(1), norm_layer(planes))
        self.k3 = nn.Sequential(conv(1), norm_layer(planes))
        self.k4 = nn.Sequential(conv(stride), norm_layer(planes))

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "SCConv", self.inplanes)
        if min(x.shape[2], x.shape[3]) < self.pooling_r:
            raise ValueError(f"SCConv: input must be at least pooling_r x pooling_r = {self.pooling_r} x "
                             f"{self.pooling_r}, got shape {tuple(x.shape)}")
        gate = torch.sigmoid(x + F.interpolate(self.k2(x), size=x.shape[2:], mode="nearest"))
        return self.k4(self.k3(x) * gate)
