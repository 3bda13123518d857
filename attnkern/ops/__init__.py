"""Functional ops: argument checks, then the CPU/CUDA kernels through ``torch.ops.attnkern``."""

from .covpool import CovpoolLayer, SqrtmLayer, TriuvecLayer, covpool, sqrtm_newton_schulz, triuvec

__all__ = ["covpool", "sqrtm_newton_schulz", "triuvec", "CovpoolLayer", "SqrtmLayer", "TriuvecLayer"]
