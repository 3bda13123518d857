"""ResNeSt split attention."""

from typing import Callable, Optional

from torch import Tensor, nn

from ._common import check_input, make_divisible, positive_int

__all__ = ["SplitAttn"]


class SplitAttn(nn.Module):
    """Split attention (Zhang et al., "ResNeSt: Split-Attention Networks", 2020), a drop-in for the
    published ``SplitAttn`` (timm's formulation; ``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``).

    A grouped k×k convolution makes R = ``radix`` splits of C_out channels (cardinality ``groups``);
    U = Σ_r U_r; s = mean_hw U; a = fc2(act(bn1(fc1(s)))), softmax over the R splits within each
    cardinal group (sigmoid when R = 1); out = Σ_r a_r[:, :, None, None] · U_r.

    The published module's computation in its op sequence (a chain of per-split multiply-adds in place
    of its broadcast product and sum over the [B, R, C, H, W] stack measured slower on the CPU), with
    argument and input checks added.

    Args:
        in_channels, out_channels (default in_channels), kernel_size, stride, padding (default
        kernel_size // 2), dilation, groups, bias: of the split convolution (groups·radix groups).
        radix: R.
        rd_ratio, rd_channels, rd_divisor: size of the attention's hidden layer: rd_channels·R when
            given, else in_channels·R·rd_ratio rounded to a multiple of rd_divisor (at least 32).
        act_layer: activation class. norm_layer: norm class or None. drop_block: a module applied
            after bn0, or None.
        **kwargs: passed to the split convolution (e.g. ``padding_mode``).
    """

    def __init__(self, in_channels: int, out_channels: Optional[int] = None, kernel_size: int = 3, stride: int = 1,
                 padding: Optional[int] = None, dilation: int = 1, groups: int = 1, bias: bool = False,
                 radix: int = 2, rd_ratio: float = 0.25, rd_channels: Optional[int] = None, rd_divisor: int = 8,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, norm_layer: Optional[Callable[[int], nn.Module]] = None,
                 drop_block: Optional[nn.Module] = None, **kwargs):
        super().__init__()
        layer = "SplitAttn"
        positive_int(in_channels, "in_channels", layer)
        out_channels = out_channels or in_channels
        positive_int(out_channels, "out_channels", layer)
        positive_int(radix, "radix", layer)
        positive_int(groups, "groups", layer)
        if in_channels % (groups * radix):
            raise ValueError(f"{layer}: in_channels must be divisible by groups * radix = {groups * radix}, got "
                             f"{in_channels}")
        if out_channels % groups:
            raise ValueError(f"{layer}: out_channels must be divisible by groups = {groups}, got {out_channels}")
        self.radix, self.groups, self.in_channels, self.drop_block = radix, groups, in_channels, drop_block
        mid_chs = out_channels * radix
        if rd_channels is None:
            attn_chs = make_divisible(in_channels * radix * rd_ratio, min_value=32, divisor=rd_divisor)
        else:
            attn_chs = positive_int(rd_channels, "rd_channels", layer) * radix
        if attn_chs % groups:
            raise ValueError(f"{layer}: the attention's hidden channels ({attn_chs}) must be divisible by groups = "
                             f"{groups}")
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, mid_chs, kernel_size, stride, padding, dilation, groups=groups * radix,
                              bias=bias, **kwargs)
        self.bn0 = norm_layer(mid_chs) if norm_layer else nn.Identity()
        self.act0 = act_layer()
        self.fc1 = nn.Conv2d(out_channels, attn_chs, 1, groups=groups)
        self.bn1 = norm_layer(attn_chs) if norm_layer else nn.Identity()
        self.act1 = act_layer()
        self.fc2 = nn.Conv2d(attn_chs, mid_chs, 1, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "SplitAttn", self.in_channels)
        x = self.bn0(self.conv(x))
        if self.drop_block is not None:
            x = self.drop_block(x)
        x = self.act0(x)
        B, RC, H, W = x.shape
        R = self.radix
        splits = x.reshape(B, R, RC // R, H, W)
        logits = self.fc2(self.act1(self.bn1(self.fc1(splits.sum(dim=1).mean(dim=(2, 3), keepdim=True)))))
        if R == 1:
            return x * logits.sigmoid()
        # logits [B, groups·R·c, 1, 1] ordered (group, split, channel) → weights [B, R, groups·c]
        weights = logits.view(B, self.groups, R, -1).softmax(dim=2).transpose(1, 2).reshape(B, R, RC // R, 1, 1)
        return (splits * weights).sum(dim=1)
