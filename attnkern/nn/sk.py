"""Selective kernel convolution (SKNet)."""

import torch
from torch import Tensor, nn

from ._common import check_input, positive_int

__all__ = ["SKConv"]


class SKConv(nn.Module):
    """Selective kernel convolution (Li et al., "Selective Kernel Networks", CVPR 2019), a drop-in for
    the published ``SKConv`` (``convs.i.{0,1}``, ``fc``, ``fcs.i``).

    M branches U_i = ReLU(BN(conv_{3+2i}(x))) (kernel 3 + 2i, padding 1 + i, G groups, same stride);
    U = Σ U_i; z = fc(mean_hw U) with d = max(in_ch / r, L) units; per branch logits fcs_i(z);
    a = softmax over the branches; out = Σ_i a_i[:, :, None, None] · U_i.

    Same outputs as the published module; it stacks the M branch outputs into one [B, M, C, H, W]
    tensor (a copy of all of them) and multiplies that whole stack by the weights — here the branch
    outputs are summed as they come and weighted one by one. Like the published module (and unlike
    the paper's fc + BN + ReLU), z has no normalisation or activation.

    Args:
        in_ch: input and output channels (divisible by G).
        M: number of branches.
        G: groups of the branch convolutions.
        r: reduction of z's size (d = max(int(in_ch / r), L)).
        stride: stride of every branch.
        L: minimum size of z.
    """

    def __init__(self, in_ch: int, M: int = 3, G: int = 1, r: int = 4, stride: int = 1, L: int = 32):
        super().__init__()
        layer = "SKConv"
        positive_int(in_ch, "in_ch", layer)
        positive_int(M, "M", layer)
        positive_int(G, "G", layer)
        positive_int(stride, "stride", layer)
        positive_int(L, "L", layer)
        if not (isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0):
            raise ValueError(f"{layer}: r must be a positive number, got {r!r}")
        if in_ch % G:
            raise ValueError(f"{layer}: in_ch must be divisible by G, got in_ch={in_ch}, G={G}")
        d = max(int(in_ch / r), L)
        self.M, self.in_ch = M, in_ch
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_ch, in_ch, kernel_size=3 + 2 * i, stride=stride, padding=1 + i, groups=G),
                nn.BatchNorm2d(in_ch),
                nn.ReLU(inplace=True),
            )
            for i in range(M)
        )
        self.fc = nn.Linear(in_ch, d)
        self.fcs = nn.ModuleList(nn.Linear(d, in_ch) for _ in range(M))
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "SKConv", self.in_ch)
        branches = [conv(x) for conv in self.convs]
        total = branches[0]
        for u in branches[1:]:
            total = total + u
        z = self.fc(total.mean(dim=(2, 3)))
        weights = self.softmax(torch.stack([fc(z) for fc in self.fcs], dim=1))  # [B, M, C]
        out = branches[0] * weights[:, 0, :, None, None]
        for i in range(1, self.M):
            out = out + branches[i] * weights[:, i, :, None, None]
        return out
