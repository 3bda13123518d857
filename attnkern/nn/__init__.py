"""Drop-in layers built on attnkern's ops: same constructor arguments, parameter names and outputs
as the published modules they replace, so their state_dicts load."""

from .covpool import SOCA
from .criss_cross import CrissCrossAttention
from .region_conv import DRConv2d
from .swin import RSTB, BasicLayer, SwinTransformerBlock, WindowAttention, set_fused_attention

__all__ = [
    "SOCA", "CrissCrossAttention", "DRConv2d",
    "WindowAttention", "SwinTransformerBlock", "BasicLayer", "RSTB", "set_fused_attention",
]
