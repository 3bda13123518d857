"""Functional ops: argument checks, then the CPU/CUDA kernels through ``torch.ops.attnkern`` — or, on CUDA
where the performance model says a kernel loses to the plain cuBLAS/cuDNN/SDPA formulation, that
formulation (:mod:`attnkern.ops._cuda_routing`; ``cuda_kernels("always")`` forces the kernels)."""

from ._cuda_routing import cuda_kernels, cuda_kernels_setting
from .covpool import CovpoolLayer, SqrtmLayer, TriuvecLayer, covpool, sqrtm_newton_schulz, triuvec
from .criss_cross import criss_cross_affinity, criss_cross_aggregate, criss_cross_attention
from .gating import apply_gates, channel_pool, group_enhance, spatial_pool
from .region_conv import dynamic_region_conv, region_assign
from .window_attention import window_attention

__all__ = [
    "covpool", "sqrtm_newton_schulz", "triuvec", "CovpoolLayer", "SqrtmLayer", "TriuvecLayer",
    "criss_cross_affinity", "criss_cross_aggregate", "criss_cross_attention",
    "region_assign", "dynamic_region_conv",
    "channel_pool", "spatial_pool", "apply_gates", "group_enhance",
    "window_attention",
    "cuda_kernels", "cuda_kernels_setting",
]
