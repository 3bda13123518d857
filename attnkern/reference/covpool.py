"""References of the covpool family (SAN's second-order channel attention, iSQRT-COV)."""

import torch
from torch import Tensor


def _as_bcm(x: Tensor) -> Tensor:
    return x.flatten(2) if x.dim() == 4 else x


def covpool(x: Tensor) -> Tensor:
    """Covariance over positions: x [B, C, H, W] or [B, C, M] → (1/M)·Xc·Xcᵀ [B, C, C], Xc = X − mean."""
    x = _as_bcm(x)
    xc = x - x.mean(dim=2, keepdim=True)
    return torch.bmm(xc, xc.transpose(1, 2)) / x.shape[2]


def covpool_centering_matrix(x: Tensor) -> Tensor:
    """The covariance as SAN's published ``Covpool`` computes it: X·Î·Xᵀ with the M×M centering
    matrix Î = I/M − 11ᵀ/M², one copy per sample. O(C·M²) work and B·M² memory; kept to test
    against and to benchmark."""
    x = _as_bcm(x)
    batch, m = x.shape[0], x.shape[2]
    eye = torch.eye(m, dtype=x.dtype, device=x.device)
    i_hat = eye / m - torch.full((m, m), 1.0 / (m * m), dtype=x.dtype, device=x.device)
    return x.bmm(i_hat.repeat(batch, 1, 1)).bmm(x.transpose(1, 2))


def sqrtm_newton_schulz(a: Tensor, iters: int = 5) -> Tensor:
    """Trace-normalised coupled Newton–Schulz iteration (SAN's ``Sqrtm``, iSQRT-COV) for iters ≥ 1.

    t = tr(a), A = a/t, Y₀ = A, Z₀ = I; for k < iters − 1: T = ½(3I − Zₖ·Yₖ), Yₖ₊₁ = Yₖ·T,
    Zₖ₊₁ = T·Zₖ; result ½·Y_f·(3I − Z_f·Y_f)·√t. With iters = 1 that is ½·A·(3I − A)·√t (the
    published code drops the factor A there). A matrix with zero trace gives zeros, with zero gradient.
    """
    if iters < 1:
        raise ValueError(f"sqrtm_newton_schulz: iters must be >= 1, got {iters}")
    n = a.shape[-1]
    trace = a.diagonal(dim1=1, dim2=2).sum(-1)
    zero = trace == 0
    trace = torch.where(zero, torch.ones_like(trace), trace).view(-1, 1, 1)
    eye = torch.eye(n, dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a / trace, eye
    for _ in range(iters - 1):
        t = 1.5 * eye - 0.5 * z.bmm(y)
        y, z = y.bmm(t), t.bmm(z)
    out = y.bmm(1.5 * eye - 0.5 * z.bmm(y)) * trace.sqrt()
    return out.masked_fill(zero.view(-1, 1, 1), 0)


def triuvec(a: Tensor) -> Tensor:
    """a [B, C, C] → [B, C(C+1)/2]: the entries a[i, j] with j ≤ i, row by row (SAN's ``Triuvec``
    order; for a symmetric matrix, its upper triangle)."""
    n = a.shape[-1]
    rows, cols = torch.tril_indices(n, n, device=a.device)
    return a[:, rows, cols]
