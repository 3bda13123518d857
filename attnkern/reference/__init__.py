"""Pure-PyTorch references: the specification of every attnkern op.

They depend on torch alone (and on :mod:`attnkern._window_geometry`, torch alone too), are
differentiable through autograd, and serve the tests, the benchmarks and devices for which no kernel
was compiled.
"""

from .covpool import covpool, covpool_centering_matrix, sqrtm_newton_schulz, triuvec
from .criss_cross import (
    criss_cross_affinity,
    criss_cross_aggregate,
    criss_cross_aggregate_transposed,
    criss_cross_attention,
    criss_cross_positions,
)
from .gating import apply_gates, channel_pool, group_enhance, spatial_pool
from . import modules
from .region_conv import dynamic_region_conv, region_assign, region_correlation
from .window_attention import (
    relative_position_index,
    shift_region_mask,
    window_attention,
    window_partition,
    window_reverse,
)

__all__ = [
    "covpool", "covpool_centering_matrix", "sqrtm_newton_schulz", "triuvec",
    "criss_cross_affinity", "criss_cross_aggregate", "criss_cross_aggregate_transposed", "criss_cross_attention",
    "criss_cross_positions", "region_assign", "region_correlation", "dynamic_region_conv",
    "window_attention", "window_partition", "window_reverse", "relative_position_index", "shift_region_mask",
    "channel_pool", "spatial_pool", "apply_gates", "group_enhance", "modules",
]
