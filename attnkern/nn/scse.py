"""Concurrent spatial and channel squeeze-and-excitation (scSE)."""

from torch import Tensor, nn

from ..ops.gating import apply_gates, channel_pool
from ._checks import check_input, positive_int
from .se import common_dtype

__all__ = ["cSE", "sSE", "scSE"]


class cSE(nn.Module):
    """Channel squeeze-and-excitation of scSE (Roy, Navab & Wachinger, "Concurrent Spatial and Channel
    Squeeze & Excitation in Fully Convolutional Networks", MICCAI 2018), a drop-in for the published
    ``cSE`` (``Conv_Squeeze``, ``Conv_Excitation``): x · σ(W_e · ReLU(W_s · mean_hw x)), 1×1 bias-free
    convolutions C → C/2 → C; pooling and product on attnkern's gating kernels.

    Args:
        in_ch: channels C ≥ 2.
    """

    def __init__(self, in_ch: int):
        super().__init__()
        self.in_ch = positive_int(in_ch, "in_ch", "cSE", minimum=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # kept for attribute compatibility; forward uses channel_pool
        self.relu = nn.ReLU()
        self.Conv_Squeeze = nn.Conv2d(in_ch, in_ch // 2, kernel_size=1, bias=False)
        self.norm = nn.Sigmoid()
        self.Conv_Excitation = nn.Conv2d(in_ch // 2, in_ch, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "cSE", self.in_ch)
        if x.shape[2] * x.shape[3] == 0:
            raise ValueError(f"cSE: input needs at least one position, got shape {tuple(x.shape)}")
        mean, _ = channel_pool(x)
        z = self.norm(self.Conv_Excitation(self.relu(self.Conv_Squeeze(mean[:, :, None, None]))))
        x, gate = common_dtype(x, z.flatten(1))
        return apply_gates(x, gate, None)


class sSE(nn.Module):
    """Spatial squeeze-and-excitation of scSE, a drop-in for the published ``sSE`` (``conv``):
    x · σ(w · x), a 1×1 bias-free convolution C → 1 giving one gate per pixel.

    Args:
        in_ch: channels C.
    """

    def __init__(self, in_ch: int):
        super().__init__()
        self.in_ch = positive_int(in_ch, "in_ch", "sSE")
        self.conv = nn.Conv2d(in_ch, 1, kernel_size=1, bias=False)
        self.norm = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "sSE", self.in_ch)
        x, gate = common_dtype(x, self.norm(self.conv(x)))
        return apply_gates(x, None, gate)


class scSE(nn.Module):
    """scSE: cSE(x) + sSE(x), a drop-in for the published ``scSE`` (sub-modules ``cSE``, ``sSE``).

    Note: the seed document files this code under the heading of SGE; SGE is :class:`attnkern.nn.SGE`.

    Args:
        in_ch: channels C ≥ 2.
    """

    def __init__(self, in_ch: int):
        super().__init__()
        self.cSE = cSE(in_ch)
        self.sSE = sSE(in_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.cSE(x) + self.sSE(x)
