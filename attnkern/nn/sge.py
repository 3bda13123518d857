"""Spatial group-wise enhance (SGE)."""

import torch
from torch import Tensor, nn

from ._common import check_input, positive_int

__all__ = ["SGE"]


class SGE(nn.Module):
    """Spatial group-wise enhance (Li, Hu & Yang, "Spatial Group-wise Enhance: Improving Semantic
    Feature Learning in Convolutional Networks", 2019), a drop-in for the authors' ``SpatialGroupEnhance``
    (parameters ``weight``, ``bias`` [1, groups, 1, 1]; initialised 0 and 1).

    The C channels split into ``groups`` groups of C/G; per sample, group and position i:

        c_i = x_i · g,  g = mean_hw x          (similarity of the local feature to the group's mean)
        ĉ_i = (c_i − mean(c)) / (std(c) + 1e-5)   over the H·W positions, std unbiased
        out_i = x_i · σ(weight · ĉ_i + bias)

    The normalisation follows the authors' code (unbiased std, ε added to it), so outputs match it;
    the paper writes the biased variance with ε inside. Fixed: a 1×1 input makes the authors' code
    divide 0 by a NaN std; here the normalised term is 0 (out = x · σ(bias)).

    Args:
        groups: G; the input's channels must be divisible by it.
    """

    def __init__(self, groups: int = 64):
        super().__init__()
        self.groups = positive_int(groups, "groups", "SGE")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))
        self.sig = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "SGE")
        b, c, h, w = x.shape
        if c % self.groups:
            raise ValueError(f"SGE: input channels must be divisible by groups={self.groups}, got shape {tuple(x.shape)}")
        n, cg = b * self.groups, c // self.groups
        xg = x.reshape(n, cg, h, w)
        # c_i = x_i · g for every position at once: [1, C/G] · [C/G, H·W] per group (the published x·g, summed
        # after, writes and reads a tensor of x's size)
        similarity = torch.bmm(self.avg_pool(xg).reshape(n, 1, cg), xg.reshape(n, cg, h * w)).view(n, h * w)
        centred = similarity - similarity.mean(dim=1, keepdim=True)
        if h * w > 1:
            normalised = centred / (centred.std(dim=1, keepdim=True) + 1e-5)
        else:
            normalised = centred  # zero: one position has no spread
        gate = normalised.view(b, self.groups, h, w) * self.weight + self.bias
        return (xg * self.sig(gate.view(n, 1, h, w))).view(b, c, h, w)
