"""Seed formulations of the plug-in modules of seed 002 (A2, SE, CBAM, SK, SGE, scSE, SCConv, ResNeSt
split attention), written from the published modules' semantics: the same constructor arguments,
parameter names and forward computation as the code users copy, bugs included where the published
code has them (``SeedDoubleAttention`` softmaxes over the batch, as published).

They are what attnkern.nn's layers are tested and benchmarked against: a layer loads
``Seed*.state_dict()`` and must give the same outputs and gradients (the paper's formula, for A2).
Also here: :func:`double_attention`, the A2-Nets formula the fixed layer computes.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "double_attention", "SeedDoubleAttention", "SeedSEAttention", "SeedChannelAttention", "SeedSpatialAttention",
    "SeedCBAM", "SeedSKConv", "SeedSGE", "SeedcSE", "SeedsSE", "SeedscSE", "SeedSCConv", "make_divisible",
    "SeedSplitAttn",
]


def double_attention(a: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """A2-Nets (Chen et al., NeurIPS 2018), the paper's formula: a [B, c_m, N] features, b [B, c_n, N]
    attention-map logits, v [B, c_n, N] attention-vector logits (N = h·w) →
    Z = A · softmax_N(B)ᵀ · softmax_{c_n}(V), [B, c_m, N]."""
    return a @ b.softmax(dim=2).transpose(1, 2) @ v.softmax(dim=1)


def _fan_out_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SeedDoubleAttention(nn.Module):
    """The published A2 module as users run it: ``F.softmax`` without ``dim`` on [B, c, N] tensors
    normalises over dim 0 — across the samples of the batch (the bug attnkern's layer fixes)."""

    def __init__(self, in_channels, c_m, c_n, reconstruct=True):
        super().__init__()
        self.in_channels, self.c_m, self.c_n, self.reconstruct = in_channels, c_m, c_n, reconstruct
        self.convA = nn.Conv2d(in_channels, c_m, 1)
        self.convB = nn.Conv2d(in_channels, c_n, 1)
        self.convV = nn.Conv2d(in_channels, c_n, 1)
        if reconstruct:
            self.conv_reconstruct = nn.Conv2d(c_m, in_channels, kernel_size=1)
        _fan_out_init(self)

    def forward(self, x):
        b, _, h, w = x.shape
        features = self.convA(x).view(b, self.c_m, h * w)
        maps = self.convB(x).view(b, self.c_n, h * w).softmax(dim=0)  # the implicit dim of F.softmax on 3-D input
        vectors = self.convV(x).view(b, self.c_n, h * w).softmax(dim=0)
        z = torch.bmm(torch.bmm(features, maps.transpose(1, 2)), vectors).view(b, self.c_m, h, w)
        return self.conv_reconstruct(z) if self.reconstruct else z


class SeedSEAttention(nn.Module):
    """Squeeze-and-excitation: x · σ(W₂ ReLU(W₁ mean_hw(x)))."""

    def __init__(self, channel=512, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class SeedChannelAttention(nn.Module):
    """CBAM's channel attention map σ(MLP(avgpool x) + MLP(maxpool x)), [B, C, 1, 1]."""

    def __init__(self, in_planes, ratio=16):
        super().__init__()
        self.avg_pool, self.max_pool = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(in_planes, in_planes // ratio, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(in_planes // ratio, in_planes, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        mlp = lambda t: self.fc2(self.relu1(self.fc1(t)))  # noqa: E731
        return self.sigmoid(mlp(self.avg_pool(x)) + mlp(self.max_pool(x)))


class SeedSpatialAttention(nn.Module):
    """CBAM's spatial attention map σ(conv([mean_c x; max_c x])), [B, 1, H, W]."""

    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True)[0]], dim=1)
        return self.sigmoid(self.conv1(pooled))


class SeedCBAM(nn.Module):
    def __init__(self, in_planes, ratio=16, kernel_size=7):
        super().__init__()
        self.ca = SeedChannelAttention(in_planes, ratio)
        self.sa = SeedSpatialAttention(kernel_size)

    def forward(self, x):
        out = x * self.ca(x)
        return out * self.sa(out)


class SeedSKConv(nn.Module):
    """Selective kernel convolution as published: M branches (kernel 3 + 2i, padding 1 + i), stacked,
    summed, pooled, fc to d = max(in_ch / r, L), one fc per branch, softmax over branches."""

    def __init__(self, in_ch, M=3, G=1, r=4, stride=1, L=32):
        super().__init__()
        d = max(int(in_ch / r), L)
        self.M, self.in_ch = M, in_ch
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_ch, in_ch, kernel_size=3 + 2 * i, stride=stride, padding=1 + i, groups=G),
                          nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True))
            for i in range(M))
        self.fc = nn.Linear(in_ch, d)
        self.fcs = nn.ModuleList(nn.Linear(d, in_ch) for _ in range(M))
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        feas = torch.cat([conv(x).unsqueeze(1) for conv in self.convs], dim=1)  # [B, M, C, H, W]
        z = self.fc(feas.sum(dim=1).mean(-1).mean(-1))
        weights = self.softmax(torch.cat([fc(z).unsqueeze(1) for fc in self.fcs], dim=1))
        return (feas * weights.unsqueeze(-1).unsqueeze(-1)).sum(dim=1)


class SeedSGE(nn.Module):
    """Spatial group-wise enhance as in the SGE authors' code: per group, the similarity of each
    position's feature to the group's mean feature, normalised over positions with the unbiased std
    (+1e-5), an affine per group, a sigmoid gate. (A 1×1 input divides 0 by NaN here.)"""

    def __init__(self, groups=64):
        super().__init__()
        self.groups = groups
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))
        self.sig = nn.Sigmoid()

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, c // self.groups, h, w)
        t = (x * self.avg_pool(x)).sum(dim=1).view(b * self.groups, h * w)
        t = t - t.mean(dim=1, keepdim=True)
        t = t / (t.std(dim=1, keepdim=True) + 1e-5)
        t = t.view(b, self.groups, h, w) * self.weight + self.bias
        return (x * self.sig(t.view(b * self.groups, 1, h, w))).view(b, c, h, w)


class SeedsSE(nn.Module):
    def __init__(self, in_ch):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, 1, kernel_size=1, bias=False)
        self.norm = nn.Sigmoid()

    def forward(self, x):
        return x * self.norm(self.conv(x))


class SeedcSE(nn.Module):
    def __init__(self, in_ch):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.relu = nn.ReLU()
        self.Conv_Squeeze = nn.Conv2d(in_ch, in_ch // 2, kernel_size=1, bias=False)
        self.norm = nn.Sigmoid()
        self.Conv_Excitation = nn.Conv2d(in_ch // 2, in_ch, kernel_size=1, bias=False)

    def forward(self, x):
        z = self.norm(self.Conv_Excitation(self.relu(self.Conv_Squeeze(self.avgpool(x)))))
        return x * z.expand_as(x)


class SeedscSE(nn.Module):
    def __init__(self, in_ch):
        super().__init__()
        self.cSE, self.sSE = SeedcSE(in_ch), SeedsSE(in_ch)

    def forward(self, x):
        return self.cSE(x) + self.sSE(x)


class SeedSCConv(nn.Module):
    """Self-calibrated convolution: k4(k3(x) · σ(x + up(k2(avgpool_r(x)))))."""

    def __init__(self, inplanes, planes, stride, padding, dilation, groups, pooling_r, norm_layer):
        super().__init__()
        conv = lambda s: nn.Conv2d(inplanes, planes, kernel_size=3, stride=s, padding=padding,  # noqa: E731
                                   dilation=dilation, groups=groups, bias=False)
        self.k2 = nn.Sequential(nn.AvgPool2d(kernel_size=pooling_r, stride=pooling_r), conv(1), norm_layer(planes))
        self.k3 = nn.Sequential(conv(1), norm_layer(planes))
        self.k4 = nn.Sequential(conv(stride), norm_layer(planes))

    def forward(self, x):
        gate = torch.sigmoid(x + F.interpolate(self.k2(x), x.shape[2:]))
        return self.k4(self.k3(x) * gate)


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None, round_limit: float = 0.9) -> int:
    """v rounded to the nearest multiple of divisor, at least min_value (default divisor), and rounded
    up a step when that lost more than 10 % (timm's helper, which ResNeSt's SplitAttn uses).

    A restatement of ``attnkern.nn._common.make_divisible``, kept on purpose: the seeds depend on torch
    alone (attnkern.nn may not be imported here, nor this file from attnkern.nn), and as an independent
    statement it checks the layer's copy — ``SplitAttn`` loading ``SeedSplitAttn``'s state dict
    (tests/test_modules.py) fails if the two round a hidden width differently."""
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * v else rounded


class SeedRadixSoftmax(nn.Module):
    def __init__(self, radix, cardinality):
        super().__init__()
        self.radix, self.cardinality = radix, cardinality

    def forward(self, x):
        batch = x.size(0)
        if self.radix == 1:
            return x.sigmoid()
        return x.view(batch, self.cardinality, self.radix, -1).transpose(1, 2).softmax(dim=1).reshape(batch, -1)


class SeedSplitAttn(nn.Module):
    """ResNeSt split attention (the timm formulation the seed prints)."""

    def __init__(self, in_channels, out_channels=None, kernel_size=3, stride=1, padding=None, dilation=1, groups=1,
                 bias=False, radix=2, rd_ratio=0.25, rd_channels=None, rd_divisor=8,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, norm_layer=None, drop_block=None, **kwargs):
        super().__init__()
        out_channels = out_channels or in_channels
        self.radix, self.drop_block = radix, drop_block
        mid_chs = out_channels * radix
        if rd_channels is None:
            attn_chs = make_divisible(in_channels * radix * rd_ratio, min_value=32, divisor=rd_divisor)
        else:
            attn_chs = rd_channels * radix
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, mid_chs, kernel_size, stride, padding, dilation, groups=groups * radix,
                              bias=bias, **kwargs)
        self.bn0 = norm_layer(mid_chs) if norm_layer else nn.Identity()
        self.act0 = act_layer()
        self.fc1 = nn.Conv2d(out_channels, attn_chs, 1, groups=groups)
        self.bn1 = norm_layer(attn_chs) if norm_layer else nn.Identity()
        self.act1 = act_layer()
        self.fc2 = nn.Conv2d(attn_chs, mid_chs, 1, groups=groups)
        self.rsoftmax = SeedRadixSoftmax(radix, groups)

    def forward(self, x):
        x = self.bn0(self.conv(x))
        if self.drop_block is not None:
            x = self.drop_block(x)
        x = self.act0(x)
        B, RC, H, W = x.shape
        if self.radix > 1:
            x = x.reshape(B, self.radix, RC // self.radix, H, W)
            gap = x.sum(dim=1)
        else:
            gap = x
        gap = self.act1(self.bn1(self.fc1(gap.mean(2, keepdim=True).mean(3, keepdim=True))))
        attn = self.rsoftmax(self.fc2(gap)).view(B, -1, 1, 1)
        if self.radix > 1:
            return (x * attn.reshape(B, self.radix, RC // self.radix, 1, 1)).sum(dim=1)
        return x * attn
