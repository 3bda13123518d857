"""attnkern: hand-written CPU and CUDA kernels for vision attention ops.

    import attnkern
    attnkern.ops.covpool(x)           # functional ops (attnkern.ops)
    attnkern.nn.SOCA(64)              # drop-in layers (attnkern.nn)
    attnkern.build_info()             # what the extension was compiled with
"""

from ._extension import build_info
from . import ops, reference, nn

__version__ = "0.1.0"

__all__ = ["build_info", "ops", "reference", "nn", "__version__"]
