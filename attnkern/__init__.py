"""attnkern: hand-written CPU and CUDA kernels for vision attention ops.

    import attnkern
    attnkern.ops.covpool(x)           # functional ops (attnkern.ops)
    attnkern.nn.SOCA(64)              # drop-in layers (attnkern.nn)
    attnkern.build_info()             # what the extension was compiled with
"""

from typing import Any, Dict

import torch

from . import _C  # noqa: F401  (loads the kernels: registers torch.ops.attnkern.*)
from . import _build_config

__version__ = "0.1.0"


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
        "cuda": _build_config.with_cuda,
        "cuda_archs": _build_config.cuda_archs,
        "torch_version": _build_config.torch_version,
        "cuda_version": _build_config.cuda_version,
        "torch_version_now": torch.__version__,
        "cpu_capability": torch.ops.attnkern.cpu_capability(),
    }


from . import ops, reference, nn  # noqa: E402

__all__ = ["build_info", "ops", "reference", "nn", "__version__"]
