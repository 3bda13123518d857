"""Covariance pooling, Newton–Schulz matrix square root and triuvec (SAN's SOCA, iSQRT-COV).

Each op calls its CPU or CUDA kernel through ``torch.ops.attnkern``; autograd and fake kernels are
registered here, so the ops run under ``torch.compile(fullgraph=True)``.
"""

import torch
from torch import Tensor

from .. import reference
from . import _plain
from ._cuda_routing import plain_on_cuda
from ._kernels import (accumulation_dtype, check_int, check_tensor, kernel_or_reference, run_check, save_inputs,
                       use_kernel)

__all__ = ["covpool", "sqrtm_newton_schulz", "triuvec", "CovpoolLayer", "SqrtmLayer", "TriuvecLayer"]

_ops = torch.ops.attnkern


def covpool(x: Tensor) -> Tensor:
    """Covariance of the channels over positions.

    Args:
        x: [B, C, H, W] or [B, C, M], floating point, with M = H·W ≥ 1.

    Returns:
        [B, C, C] = (1/M)·Xc·Xcᵀ with Xc = X − (mean over the M = H·W positions). Same numbers as
        SAN's ``Covpool`` (X·Î·Xᵀ with its M×M centering matrix Î) without any M×M matrix.

    Raises:
        TypeError: x is not a floating-point tensor.
        ValueError: x is not [B, C, H, W] or [B, C, M], or has no position (M = 0).

    Example:
        >>> cov = attnkern.ops.covpool(torch.randn(16, 64, 48, 48))   # [16, 64, 64]
    """
    op = "covpool"
    check_tensor(x, "x", op)
    if x.dim() == 4:
        x = x.flatten(2)
    elif x.dim() != 3:
        raise ValueError(f"{op}: x: expected a 4-D tensor [B, C, H, W] or a 3-D tensor [B, C, M], got shape "
                         f"{list(x.shape)}")
    if use_kernel(x):
        return _ops.covpool(x)
    run_check(_ops.covpool_check, x)
    return reference.covpool(x)


def sqrtm_newton_schulz(a: Tensor, iters: int = 5) -> Tensor:
    """Matrix square root by the trace-normalised coupled Newton–Schulz iteration (SAN's ``Sqrtm``).

    Args:
        a: [B, C, C], floating point; meant for symmetric positive (semi-)definite matrices such as
            covariances. A matrix with zero trace gives zeros (and zero gradient).
        iters: number of iterations, 1 ≤ iters ≤ 1000 (SAN uses 5; 1000 steps converge for any
            eigenvalue a float64 holds).

    Returns:
        [B, C, C] ≈ a^½: with t = tr(a), A = a/t, Y₀ = A, Z₀ = I, Tₖ = ½(3I − ZₖYₖ), Yₖ₊₁ = YₖTₖ,
        Zₖ₊₁ = TₖZₖ, the result is ½·Y(3I − ZY)·√t after iters − 1 steps. The gradient is the exact
        gradient of this forward (for any incoming gradient, symmetric or not).

    On CUDA, float16/bfloat16 matrices larger than 64×64 run this formula in their own dtype (bmm on
    tensor cores, the iterates rounded to the dtype; ``attnkern.ops.cuda_kernels`` explains the
    routing); every other call runs attnkern's kernels, which keep the iterates in float32.

    Raises:
        TypeError: a is not a floating-point tensor, or iters not an int.
        ValueError: a is not [B, C, C], or iters is out of range.

    Example:
        >>> root = attnkern.ops.sqrtm_newton_schulz(attnkern.ops.covpool(x), iters=5)
    """
    op = "sqrtm_newton_schulz"
    check_tensor(a, "a", op)
    iters = check_int(iters, "iters", op)
    if use_kernel(a):
        if not plain_on_cuda(op, a, size=a.shape[-1] if a.dim() == 3 else None):
            # Training keeps the iterates for the backward (3·iters − 4 matrices per input); inference does not.
            save_iterates = torch.is_grad_enabled() and a.requires_grad
            return _ops.sqrtm_newton_schulz(a, iters, save_iterates)[0]
        run_check(_ops.sqrtm_newton_schulz_check, a, iters)
        return _plain.sqrtm_newton_schulz(a, iters)  # CUDA: the routing table (attnkern.ops._cuda_routing)
    run_check(_ops.sqrtm_newton_schulz_check, a, iters)
    return reference.sqrtm_newton_schulz(a, iters)


def triuvec(a: Tensor) -> Tensor:
    """Vectorise the lower triangle row by row: a [B, C, C] → [B, C(C+1)/2].

    The order is SAN's ``Triuvec``: a[0,0], a[1,0], a[1,1], a[2,0], … (for the symmetric matrices it
    is used on, the upper triangle).

    Raises:
        TypeError: a is not a floating-point tensor.
        ValueError: a is not [B, C, C].

    Example:
        >>> attnkern.ops.triuvec(torch.randn(2, 3, 3)).shape
        torch.Size([2, 6])
    """
    op = "triuvec"
    check_tensor(a, "a", op)
    return kernel_or_reference(_ops.triuvec, _ops.triuvec_check, reference.triuvec, a)


# The names of SAN's MPNCOV module, for code written against it.
def CovpoolLayer(var: Tensor) -> Tensor:  # noqa: N802
    """SAN's ``CovpoolLayer``: :func:`covpool`."""
    return covpool(var)


def SqrtmLayer(var: Tensor, iterN: int) -> Tensor:  # noqa: N802, N803
    """SAN's ``SqrtmLayer``: :func:`sqrtm_newton_schulz` (also correct for iterN = 1)."""
    return sqrtm_newton_schulz(var, iterN)


def TriuvecLayer(var: Tensor) -> Tensor:  # noqa: N802
    """SAN's ``TriuvecLayer``: :func:`triuvec`, without its batch loop or float32 cast."""
    return triuvec(var)


# ---- autograd and fake kernels --------------------------------------------------------------


def _covpool_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.attnkern.covpool_backward(grad, x)


def _sqrtm_setup(ctx, inputs, output):
    a, iters = inputs[0], inputs[1]
    iterates = output[1]
    ctx.mark_non_differentiable(iterates)
    ctx.set_materialize_grads(False)  # else autograd fills a zero gradient for the iterates
    ctx.save_for_backward(a, iterates)  # iterates is empty unless save_iterates: then recomputed
    ctx.iters = iters


def _sqrtm_backward(ctx, grad, grad_iterates):
    if grad is None:  # gradients are not materialised: None stands for zero
        return None, None, None
    a, iterates = ctx.saved_tensors
    return torch.ops.attnkern.sqrtm_newton_schulz_backward(grad, a, iterates, ctx.iters), None, None


def _triuvec_setup(ctx, inputs, output):
    ctx.n = inputs[0].shape[-1]


def _triuvec_backward(ctx, grad):
    return torch.ops.attnkern.triuvec_backward(grad, ctx.n)


torch.library.register_autograd("attnkern::covpool", _covpool_backward, setup_context=save_inputs)
torch.library.register_autograd("attnkern::sqrtm_newton_schulz", _sqrtm_backward, setup_context=_sqrtm_setup)
torch.library.register_autograd("attnkern::triuvec", _triuvec_backward, setup_context=_triuvec_setup)


@torch.library.register_fake("attnkern::covpool")
def _covpool_fake(x):
    return x.new_empty(x.shape[0], x.shape[1], x.shape[1])


def _check_same_device(grad, grad_name, t, t_name, op):
    torch._check_type(
        grad.device == t.device,
        lambda: f"{op}: {grad_name} and {t_name} must be on the same device, got {grad.device} and {t.device}",
    )


@torch.library.register_fake("attnkern::covpool_backward")
def _covpool_backward_fake(grad, x):
    _check_same_device(grad, "grad", x, "x", "covpool_backward")
    return x.new_empty(x.shape)


@torch.library.register_fake("attnkern::sqrtm_newton_schulz")
def _sqrtm_fake(a, iters, save_iterates=False):
    count = 3 * iters - 4 if iters > 1 else 0  # covpool.h: saved_iterate_count
    shape = (count, *a.shape) if save_iterates else (0,)
    return a.new_empty(a.shape), a.new_empty(shape, dtype=accumulation_dtype(a.dtype))


@torch.library.register_fake("attnkern::sqrtm_newton_schulz_backward")
def _sqrtm_backward_fake(grad, a, iterates, iters):
    _check_same_device(grad, "grad", a, "a", "sqrtm_newton_schulz_backward")
    return a.new_empty(a.shape)


@torch.library.register_fake("attnkern::triuvec")
def _triuvec_fake(a):
    n = a.shape[-1]
    return a.new_empty(a.shape[0], n * (n + 1) // 2)


@torch.library.register_fake("attnkern::triuvec_backward")
def _triuvec_backward_fake(grad, n):
    return grad.new_empty(grad.shape[0], n, n)
