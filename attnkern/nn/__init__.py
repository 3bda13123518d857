"""Drop-in layers built on attnkern's ops: same constructor arguments, parameter names and outputs
as the published modules they replace, so their state_dicts load."""

from .covpool import SOCA
from .criss_cross import CrissCrossAttention
from .region_conv import DRConv2d

__all__ = ["SOCA", "CrissCrossAttention", "DRConv2d"]
