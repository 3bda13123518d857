"""Squeeze-and-excitation channel attention on attnkern's gating kernels."""

from torch import Tensor, nn

from ..ops.gating import apply_gates
from ._common import check_input, common_dtype, positive_int

__all__ = ["SEAttention"]


class SEAttention(nn.Module):
    """Squeeze-and-excitation block (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018), a
    drop-in for the published ``SEAttention`` (same arguments and parameter names: ``fc.0``, ``fc.2``).

        s = mean_hw(x)  [B, C],   g = σ(W₂ · ReLU(W₁ · s)),   out = x · g[:, :, None, None]

    with W₁ [C/r, C], W₂ [C, C/r] bias-free linear layers. The product is attnkern's ``apply_gates``,
    whose backward produces grad_x and the gate's gradient Σ_hw grad·x in one pass (the published
    ``x * y.expand_as(x)`` materialises grad·x for the sum). The squeeze is ATen's mean (vectorised).

    As published, ``init_weights`` exists but the constructor does not call it (PyTorch's default
    initialisation applies). Nothing else differs from the published module.

    Args:
        channel: input channels C.
        reduction: r; C // r ≥ 1 hidden units.
    """

    def __init__(self, channel: int = 512, reduction: int = 16):
        super().__init__()
        self.channel = positive_int(channel, "channel", "SEAttention")
        positive_int(reduction, "reduction", "SEAttention")
        if channel // reduction < 1:
            raise ValueError(f"SEAttention: channel // reduction must be >= 1, got {channel} // {reduction}")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)  # kept for attribute compatibility (no parameters)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def init_weights(self) -> None:
        """The published initialisation (never called by the published constructor): linear weights
        normal with std 0.001, biases zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "SEAttention", self.channel)
        if x.shape[2] * x.shape[3] == 0:
            raise ValueError(f"SEAttention: input needs at least one position, got shape {tuple(x.shape)}")
        x, gate = common_dtype(x, self.fc(x.mean(dim=(2, 3))))
        return apply_gates(x, gate, None)
