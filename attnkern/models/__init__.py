"""Whole networks built on attnkern's layers: :class:`SwinIR` (:mod:`attnkern.models.swinir`, which also
holds the command line ``python -m attnkern.models.swinir``)."""

from .swinir import SwinIR, task_config, tiled_forward

__all__ = ["SwinIR", "task_config", "tiled_forward"]
