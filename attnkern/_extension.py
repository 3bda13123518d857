"""The compiled extension, ``attnkern._C``: importing this module loads it (which registers the
``torch.ops.attnkern.*`` ops and their CPU/CUDA kernels), and says what it was compiled with
(``_build_config.py``, written by setup.py next to it)."""

from typing import Any, Dict

import torch

from . import _C  # noqa: F401  (loads the kernels: registers torch.ops.attnkern.*)
from . import _build_config

# Whether CUDA kernels were compiled (else CUDA tensors run the references).
WITH_CUDA: bool = _build_config.with_cuda


def build_info() -> Dict[str, Any]:
    """What attnkern._C was compiled with.

    Returns a dict with ``cuda`` (whether CUDA kernels were compiled), ``cuda_archs`` (the target
    architectures, e.g. ``"8.0;8.6;9.0+PTX"``, empty without CUDA), ``torch_version`` and
    ``cuda_version`` (of the torch it was built against; ``cuda_version`` is None without CUDA), and
    ``torch_version_now`` (the torch running now: a mismatch means the extension must be rebuilt), and
    ``cpu_capability``: the instruction set the vectorised CPU kernels run with, ``"avx512"``, ``"avx2"``
    or ``"default"`` (SSE2 on x86-64, NEON on Arm) — the best this CPU runs, or a lower one forced with
    the environment variable ``ATTNKERN_CPU_CAPABILITY`` (read once, at the first call).
    """
    return {
        "cuda": WITH_CUDA,
        "cuda_archs": _build_config.cuda_archs,
        "torch_version": _build_config.torch_version,
        "cuda_version": _build_config.cuda_version,
        "torch_version_now": torch.__version__,
        "cpu_capability": torch.ops.attnkern.cpu_capability(),
    }
