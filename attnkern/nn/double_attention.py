"""A2-Nets double attention."""

import torch
from torch import Tensor, nn

from ._common import check_input, positive_int

__all__ = ["DoubleAttention"]


class DoubleAttention(nn.Module):
    """Double attention block (Chen et al., "A²-Nets: Double Attention Networks", NeurIPS 2018), a
    drop-in for the published ``DoubleAttention`` (same arguments, parameter names and initialisation).

    With A = convA(x) [B, c_m, N], B = convB(x) and V = convV(x) [B, c_n, N] (N = h·w):

        G = A · softmax_N(B)ᵀ            (gather: c_n global descriptors, each an attention-weighted
                                          average of the features over the positions)
        Z = G · softmax_{c_n}(V)         (distribute: each position mixes the descriptors)

    then ``conv_reconstruct`` (1×1, c_m → in_channels) when ``reconstruct``.

    Fixed from the published code: it calls ``F.softmax`` without ``dim`` on [B, c, N] tensors, which
    normalises over dim 0 — across the samples of the batch — so a sample's output depends on the
    other samples, and a batch of one gives all-ones attention. Here the maps are normalised over
    the N positions and the vectors over the c_n descriptors, as the paper's equations say. Weights
    trained with the published module load, but its outputs are not reproduced
    (``attnkern.reference.modules.SeedDoubleAttention`` is the published behaviour).

    Args:
        in_channels: channels of the input (and of the output with ``reconstruct``).
        c_m: feature channels (rows of G).
        c_n: number of descriptors.
        reconstruct: project back to ``in_channels`` with a 1×1 convolution.
    """

    def __init__(self, in_channels: int, c_m: int, c_n: int, reconstruct: bool = True):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels", "DoubleAttention")
        self.c_m = positive_int(c_m, "c_m", "DoubleAttention")
        self.c_n = positive_int(c_n, "c_n", "DoubleAttention")
        self.reconstruct = bool(reconstruct)
        self.convA = nn.Conv2d(in_channels, c_m, 1)
        self.convB = nn.Conv2d(in_channels, c_n, 1)
        self.convV = nn.Conv2d(in_channels, c_n, 1)
        if self.reconstruct:
            self.conv_reconstruct = nn.Conv2d(c_m, in_channels, kernel_size=1)
        self.init_weights()

    def init_weights(self) -> None:
        """As published: Kaiming-normal (fan_out) convolution weights, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "DoubleAttention", self.in_channels)
        b, _, h, w = x.shape
        features = self.convA(x).flatten(2)                   # [B, c_m, N]
        maps = self.convB(x).flatten(2).softmax(dim=2)        # over the positions
        vectors = self.convV(x).flatten(2).softmax(dim=1)     # over the descriptors
        descriptors = torch.bmm(features, maps.transpose(1, 2))  # [B, c_m, c_n]
        z = torch.bmm(descriptors, vectors).view(b, self.c_m, h, w)
        return self.conv_reconstruct(z) if self.reconstruct else z
