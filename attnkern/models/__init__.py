"""Whole networks built on attnkern's layers: :class:`SwinIR` (``attnkern.models.swinir``, which also
holds the command line ``python -m attnkern.models.swinir``).

The submodule is imported on first use of a name, so running it with ``python -m`` does not import it
twice.
"""

from typing import Any

__all__ = ["SwinIR", "task_config", "tiled_forward"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import swinir
        return getattr(swinir, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
