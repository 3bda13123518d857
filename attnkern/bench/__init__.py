"""Benchmarks of attnkern's families at the shapes users run: ``python -m attnkern.bench`` (the options:
:mod:`attnkern.bench.runner`).

Modules: ``runner`` (the command line, the measurements, the table), ``case`` (what a family's module
builds: :class:`Case`, :class:`Result`) and one module per family — ``covpool``, ``criss_cross``,
``gating``, ``modules`` (the seed-002 layers), ``region_conv``, ``window_attention``, ``yolo`` — each
with ``cases(device, smoke)``. Results from a GPU are committed under ``benchmarks/results/`` of the
source tree.
"""

from .case import (
    KERNELS_ROW, ONNX_RUNTIME, Case, Result, cpu_capability, layer_cases, onnxruntime_row, with_kernels_row,
)
from .runner import (
    CAPABILITY_FAMILIES, CPU_CAPABILITIES, FAMILIES, PeakMemory, capability_environment, cpu_capabilities_supported,
    main, markdown, run,
)

__all__ = [
    "Case", "Result", "layer_cases", "onnxruntime_row", "with_kernels_row", "KERNELS_ROW", "ONNX_RUNTIME",
    "cpu_capability", "run", "markdown", "main",
    "PeakMemory", "FAMILIES", "CAPABILITY_FAMILIES", "CPU_CAPABILITIES", "capability_environment",
    "cpu_capabilities_supported",
]
