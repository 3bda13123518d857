"""Which devices have compiled attnkern kernels, and the argument checks every op shares."""

import torch
from torch import Tensor

from .. import _build_config
from ..export import is_portable

# Devices whose tensors go to torch.ops.attnkern; others run the pure-PyTorch reference.
# "meta" covers fake tensors (torch.compile, opcheck): the ops' fake kernels handle them.
KERNEL_DEVICES = frozenset(("cpu", "meta", "cuda") if _build_config.with_cuda else ("cpu", "meta"))


def has_kernel(t: Tensor) -> bool:
    """Whether t's op runs attnkern's kernel: a device with kernels, and not in portable mode
    (ONNX export, attnkern.export.portable()), where the pure-PyTorch reference runs instead."""
    return t.device.type in KERNEL_DEVICES and not is_portable()


def save_inputs(ctx, inputs, output) -> None:
    """setup_context for ops whose backward needs every tensor input."""
    ctx.save_for_backward(*inputs)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels accumulate in (and keep saved statistics in): float32 for half types."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_floating(t: object, name: str, op: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_square_batch(a: Tensor, name: str, op: str) -> None:
    if a.dim() != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"{op}: {name} must be a batch of square matrices [B, C, C], got shape {tuple(a.shape)}")
