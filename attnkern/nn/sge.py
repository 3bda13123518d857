"""Spatial group-wise enhance (SGE)."""

import torch
from torch import Tensor, nn

from ..ops import group_enhance
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
    the paper writes the biased variance with ε inside. One op, :func:`attnkern.ops.group_enhance`, a
    (sample, group) at a time (the layer's ATen ops each took a pass over the whole map and kept several
    maps for the backward, which now saves x alone). Fixed: a 1×1 input makes the authors' code divide 0 by
    a NaN std; here the normalised term is 0 (out = x · σ(bias)). A half-precision input with float32
    parameters gives an output of the input's dtype (the parameters are cast), where the authors' code
    promotes it to float32.

    Args:
        groups: G; the input's channels must be divisible by it.
    """

    def __init__(self, groups: int = 64):
        super().__init__()
        self.groups = positive_int(groups, "groups", "SGE")
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "SGE")
        if x.shape[1] % self.groups:
            raise ValueError(f"SGE: input channels must be divisible by groups={self.groups}, got shape {tuple(x.shape)}")
        return group_enhance(x, self.weight.view(-1).to(x.dtype), self.bias.view(-1).to(x.dtype), self.groups)
