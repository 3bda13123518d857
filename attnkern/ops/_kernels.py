"""Which devices have compiled attnkern kernels, and the Python side of the argument checks.

Every check of the tensors and sizes an op receives lives in C++ (``csrc/<family>/<family>_host.cpp``,
with the helpers of ``csrc/common/checks.h``): the kernels run it, so ``attnkern.ops.X`` and
``torch.ops.attnkern.X`` raise the same error, and so does the op's ``torch.ops.attnkern.X_check``, which
the functions of ``attnkern.ops`` run before a pure-PyTorch reference (devices without kernels). What is
checked here is what never reaches C++ as such: that a tensor argument is a tensor, an int argument an
int (a bool or a float is not) that fits in int64, a real argument a real number. The dispatcher would
turn a bool into 1 and report the others as a RuntimeError about the schema.
"""

import numbers
import operator
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._extension import WITH_CUDA
from ..export import is_portable

# Devices whose tensors go to torch.ops.attnkern; others run the pure-PyTorch reference.
# "meta" covers fake tensors (torch.compile, opcheck): the ops' fake kernels handle them.
KERNEL_DEVICES = frozenset(("cpu", "meta", "cuda") if WITH_CUDA else ("cpu", "meta"))

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def use_kernel(*tensors: Optional[Tensor]) -> bool:
    """Whether an op runs its kernel: its tensors (None for an absent optional one) all lie on one device
    that has kernels, and attnkern is not in portable mode (ONNX export, attnkern.export.portable()).
    Otherwise it runs the reference after its check op, which also rejects tensors on different devices
    (TypeError)."""
    devices = {t.device for t in tensors if t is not None}
    return len(devices) == 1 and next(iter(devices)).type in KERNEL_DEVICES and not is_portable()


def run_check(check_op, *args) -> None:
    """Runs an op's check op (its kernels' C++ checks) before a reference. Under torch.compile it is
    skipped (the checks need concrete sizes): the traced reference's own errors apply there."""
    if not torch.compiler.is_compiling():
        check_op(*args)


def kernel_or_reference(kernel, check_op, reference_fn, *args):
    """An op whose kernel, check op and reference take the same arguments: its kernel where use_kernel says so
    for the tensors among args, else its check op and then its reference."""
    if use_kernel(*[a for a in args if isinstance(a, Tensor)]):
        return kernel(*args)
    run_check(check_op, *args)
    return reference_fn(*args)


def save_inputs(ctx, inputs, output) -> None:
    """setup_context for ops whose backward needs every tensor input."""
    ctx.save_for_backward(*inputs)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels accumulate in (and keep saved statistics in): float32 for half types."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_tensor(value: object, name: str, op: str, optional: bool = False) -> None:
    """A TypeError unless value is a tensor (or None, when optional)."""
    if value is None and optional:
        return
    if not isinstance(value, Tensor):
        kind = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(f"{op}: {name} must be {kind}, got {type(value).__name__}")


def _as_int(value: object) -> Optional[int]:
    """value as a Python int, or None when it is not an integer (a bool is not)."""
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, (bool, Tensor)):  # a bool is not a size; a tensor is not a Python int
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _check_int64(value: int, name: str, op: str, got: object) -> None:
    if not isinstance(value, torch.SymInt) and not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{op}: {name} must fit in int64, got {got!r}")


def check_int(value: object, name: str, op: str) -> int:
    """value as an int: a TypeError unless it is an integer (not a bool), a ValueError unless it fits in
    int64. Its range is the op's C++ check."""
    result = _as_int(value)
    if result is None:
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}")
    _check_int64(result, name, op, value)
    return result


def int_pair(value: object, name: str, op: str) -> Tuple[int, int]:
    """An int or a pair of ints as a pair (as torch.nn.functional.conv2d takes stride and padding)."""
    values = list(value) if isinstance(value, (tuple, list)) else [value, value]
    pair = [_as_int(v) for v in values]
    if len(pair) != 2 or any(v is None for v in pair):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    for v in pair:
        _check_int64(v, name, op, value)
    return pair[0], pair[1]


def check_real(value: object, name: str, op: str) -> float:
    """value as a float: a TypeError unless it is a real number (not a bool)."""
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)
