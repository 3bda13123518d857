"""Drop-in layers built on attnkern's ops: same constructor arguments, parameter names and outputs
as the published modules they replace, so their state_dicts load."""

from .cbam import CBAM, ChannelAttention, SpatialAttention
from .covpool import SOCA
from .criss_cross import CrissCrossAttention
from .double_attention import DoubleAttention
from .region_conv import DRConv2d
from .scconv import SCConv
from .scse import cSE, scSE, sSE
from .se import SEAttention
from .sge import SGE
from .sk import SKConv
from .split_attn import SplitAttn
from .swin import RSTB, BasicLayer, SwinTransformerBlock, WindowAttention, set_fused_attention

__all__ = [
    "SOCA", "CrissCrossAttention", "DRConv2d",
    "DoubleAttention", "SEAttention", "ChannelAttention", "SpatialAttention", "CBAM", "SKConv", "SGE", "cSE",
    "sSE", "scSE", "SCConv", "SplitAttn",
    "WindowAttention", "SwinTransformerBlock", "BasicLayer", "RSTB", "set_fused_attention",
]
