"""covpool family: covpool, sqrtm_newton_schulz, triuvec, and the SOCA layer."""

import pytest
import torch
from torch import nn

import attnkern
from attnkern import ops, reference
from attnkern.nn import SOCA
from conftest import (DEVICE_DTYPES, DEVICES, TOLERANCE, assert_compiles_like_eager, assert_same_parameter_gradients,
                      rel_error, requires_cuda)

COVPOOL_SHAPES = [(2, 5, 7, 3), (1, 17, 9, 11), (3, 64, 8, 8), (2, 33, 1, 1), (4, 3, 31), (1, 1, 2, 2)]
MATRIX_SIZES = [(1, 1), (3, 5), (2, 16), (4, 17), (2, 64)]


def spd(batch, n, dtype=torch.float64, device="cpu"):
    """Symmetric positive definite matrices with a spread of eigenvalues (covariance-like)."""
    x = torch.randn(batch, n, 2 * n + 3, dtype=torch.float64)
    return reference.covpool(x).add_(0.1 * torch.eye(n, dtype=torch.float64)).to(device=device, dtype=dtype)


def non_contiguous(t):
    """The same values in a non-contiguous layout (last two dims swapped in memory)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


# ---- covpool --------------------------------------------------------------------------------


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", COVPOOL_SHAPES)
def test_covpool_forward(device, dtype, shape):
    x = (torch.randn(shape, dtype=torch.float64) + 3.0).to(device)  # non-zero mean: centring matters
    out = ops.covpool(x.to(dtype))
    assert out.shape == (shape[0], shape[1], shape[1]) and out.dtype == dtype
    assert rel_error(out, reference.covpool(x)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_covpool_matches_centering_matrix_formulation(device):
    x = torch.randn(3, 12, 6, 5, dtype=torch.float64, device=device)
    assert rel_error(ops.covpool(x), reference.covpool_centering_matrix(x)) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_covpool_non_contiguous(device):
    x = torch.randn(2, 9, 13, 6, device=device).permute(0, 1, 3, 2)
    assert not x.is_contiguous()
    assert rel_error(ops.covpool(x), reference.covpool(x.double())) <= 1e-5


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 19, 4, 9), (3, 40, 6, 6)])
def test_covpool_backward(device, dtype, shape):
    x = torch.randn(shape, dtype=torch.float64, device=device) + 3.0  # non-zero mean
    grad = torch.randn(shape[0], shape[1], shape[1], dtype=torch.float64, device=device)  # not symmetric
    x_ref = x.clone().requires_grad_()
    reference.covpool(x_ref).backward(grad)
    x_k = x.to(dtype).requires_grad_()
    ops.covpool(x_k).backward(grad.to(dtype))
    assert rel_error(x_k.grad, x_ref.grad) <= TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_covpool_gradcheck(device):
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(ops.covpool, (x,))


# ---- sqrtm_newton_schulz --------------------------------------------------------------------


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("batch,n", MATRIX_SIZES)
@pytest.mark.parametrize("iters", [1, 2, 5])
def test_sqrtm_forward(device, dtype, batch, n, iters):
    a = spd(batch, n, device=device)
    out = ops.sqrtm_newton_schulz(a.to(dtype), iters)
    assert out.shape == a.shape and out.dtype == dtype
    assert rel_error(out, reference.sqrtm_newton_schulz(a, iters)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_sqrtm_one_iteration_keeps_factor_a(device):
    """iters = 1 is ½·A·(3I − A)·√tr (the published forward drops the factor A)."""
    a = spd(3, 6, device=device)
    t = a.diagonal(dim1=1, dim2=2).sum(-1).view(-1, 1, 1)
    A = a / t
    expected = 0.5 * A.bmm(3 * torch.eye(6, dtype=a.dtype, device=device) - A) * t.sqrt()
    assert rel_error(ops.sqrtm_newton_schulz(a, 1), expected) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_sqrtm_converges_to_square_root(device):
    a = spd(4, 10, device=device)
    root = ops.sqrtm_newton_schulz(a, 30)
    assert rel_error(root.bmm(root), a) <= 1e-8


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("batch,n", MATRIX_SIZES)
@pytest.mark.parametrize("iters", [1, 2, 5])
def test_sqrtm_backward_non_symmetric_grad(device, dtype, batch, n, iters):
    a = spd(batch, n, device=device)
    grad = torch.randn(batch, n, n, dtype=torch.float64, device=device)
    a_ref = a.clone().requires_grad_()
    reference.sqrtm_newton_schulz(a_ref, iters).backward(grad)
    a_k = a.to(dtype).requires_grad_()
    ops.sqrtm_newton_schulz(a_k, iters).backward(grad.to(dtype))
    assert rel_error(a_k.grad, a_ref.grad) <= TOLERANCE[dtype] * (10 if dtype in (torch.float16, torch.bfloat16) else 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("iters", [1, 3])
def test_sqrtm_gradcheck(device, iters):
    a = spd(2, 4, device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: ops.sqrtm_newton_schulz(m, iters), (a,))


@pytest.mark.parametrize("device", DEVICES)
def test_sqrtm_non_symmetric_input(device):
    """The op is defined for any matrix with non-zero trace; value and gradient follow the reference."""
    a = spd(2, 7, device=device) + 0.05 * torch.randn(2, 7, 7, dtype=torch.float64, device=device)
    a.requires_grad_()
    assert torch.autograd.gradcheck(lambda m: ops.sqrtm_newton_schulz(m, 3), (a,))


@pytest.mark.parametrize("device", DEVICES)
def test_sqrtm_zero_trace_gives_zeros_and_zero_gradient(device):
    a = spd(3, 5, device=device)
    a[1] = 0
    a.requires_grad_()
    out = ops.sqrtm_newton_schulz(a, 5)
    out.backward(torch.randn_like(out))
    assert torch.isfinite(out).all() and torch.isfinite(a.grad).all()
    assert (out[1] == 0).all() and (a.grad[1] == 0).all()
    assert rel_error(out[0], reference.sqrtm_newton_schulz(a[:1].detach(), 5)[0]) <= 1e-12


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sqrtm_cuda_large_matrices_use_batched_path(dtype):
    """Matrices too large for one block's shared memory go through batched GEMM."""
    a = spd(2, 130, device="cuda")
    grad = torch.randn_like(a)
    a_ref = a.clone().requires_grad_()
    reference.sqrtm_newton_schulz(a_ref, 5).backward(grad)
    a_k = a.to(dtype).requires_grad_()
    out = ops.sqrtm_newton_schulz(a_k, 5)
    out.backward(grad.to(dtype))
    assert rel_error(out, reference.sqrtm_newton_schulz(a, 5)) <= TOLERANCE[dtype]
    assert rel_error(a_k.grad, a_ref.grad) <= TOLERANCE[dtype]


# ---- triuvec --------------------------------------------------------------------------------


def seed_triuvec_order(n):
    """SAN's Triuvec index: the flat positions where ones(n, n).triu().t() is non-zero."""
    return torch.ones(n, n).triu().t().reshape(n * n).nonzero().squeeze(1)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("batch,n", [(1, 1), (3, 5), (2, 33)])
def test_triuvec_seed_order(device, dtype, batch, n):
    a = torch.randn(batch, n, n, device=device).to(dtype)
    out = ops.triuvec(a)
    assert out.shape == (batch, n * (n + 1) // 2) and out.dtype == dtype
    assert torch.equal(out, a.reshape(batch, n * n)[:, seed_triuvec_order(n).to(device)])
    assert torch.equal(ops.triuvec(non_contiguous(a)), out)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_triuvec_backward(device, dtype):
    a = torch.randn(3, 9, 9, device=device).to(dtype).requires_grad_()
    grad = torch.randn(3, 45, device=device).to(dtype)
    ops.triuvec(a).backward(grad)
    expected = torch.zeros(3, 81, device=device, dtype=dtype)
    expected[:, seed_triuvec_order(9).to(device)] = grad
    assert torch.equal(a.grad, expected.view(3, 9, 9))


@pytest.mark.parametrize("device", DEVICES)
def test_triuvec_gradcheck(device):
    a = torch.randn(2, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(ops.triuvec, (a,))


# ---- opcheck and the seed's names --------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x = torch.randn(2, 6, 4, 5, device=device).flatten(2)
    a = spd(2, 6, dtype=torch.float32, device=device)
    g = torch.randn(2, 6, 6, device=device)
    cases = [
        (torch.ops.attnkern.covpool.default, (x.requires_grad_(),)),
        (torch.ops.attnkern.covpool_backward.default, (g, x.detach())),
        (torch.ops.attnkern.sqrtm_newton_schulz.default, (a.clone().requires_grad_(), 3)),
        (torch.ops.attnkern.sqrtm_newton_schulz.default, (a.clone().requires_grad_(), 3, True)),
        (torch.ops.attnkern.sqrtm_newton_schulz_backward.default, (g, a, a.new_empty(0), 3)),
        (torch.ops.attnkern.sqrtm_newton_schulz_backward.default,
         (g, a, torch.ops.attnkern.sqrtm_newton_schulz(a, 3, True)[1], 3)),
        (torch.ops.attnkern.triuvec.default, (a.clone().requires_grad_(),)),
        (torch.ops.attnkern.triuvec_backward.default, (torch.randn(2, 21, device=device), 6)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_seed_names():
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    cov = ops.CovpoolLayer(x)
    assert torch.equal(cov, ops.covpool(x))
    assert torch.equal(ops.SqrtmLayer(cov, 5), ops.sqrtm_newton_schulz(cov, 5))
    assert torch.equal(ops.TriuvecLayer(cov), ops.triuvec(cov))


# ---- bad inputs and empty batches ----------------------------------------------------------

BAD_INPUTS = [
    (ops.covpool, (torch.randn(2, 3),), ValueError, r"covpool: x: expected a 4-D tensor \[B, C, H, W\] or a 3-D tensor"),
    (ops.covpool, (torch.randn(2, 3, 0),), ValueError, "at least one position"),
    (ops.covpool, (torch.ones(2, 3, 4, dtype=torch.int64),), TypeError, "x: expected a floating-point tensor, got Long"),
    (ops.covpool, ([[1.0]],), TypeError, "x must be a torch.Tensor, got list"),
    (ops.sqrtm_newton_schulz, (torch.randn(2, 3, 4),), ValueError, r"a: expected a batch of square matrices \[B, C, C\]"),
    (ops.sqrtm_newton_schulz, (torch.randn(3, 3),), ValueError, r"a: expected a 3-D tensor \[B, C, C\], got shape \[3, 3\]"),
    (ops.sqrtm_newton_schulz, (torch.ones(2, 3, 3, dtype=torch.int32),), TypeError, "floating-point"),
    (ops.sqrtm_newton_schulz, (torch.randn(2, 3, 3), 0), ValueError, r"iters must be in \[1, 1000\], got 0"),
    (ops.sqrtm_newton_schulz, (torch.randn(2, 3, 3), 2.5), TypeError, "iters must be an int, got float"),
    (ops.triuvec, (torch.randn(2, 3, 4),), ValueError, "square matrices"),
    (ops.triuvec, (torch.randn(2, 2, 3, 3),), ValueError, r"a: expected a 3-D tensor \[B, C, C\]"),
    (ops.triuvec, (torch.ones(1, 2, 2, dtype=torch.int64),), TypeError, "floating-point"),
]


@pytest.mark.parametrize("fn,args,exc,match", BAD_INPUTS)
def test_bad_inputs(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


KERNEL_BAD_INPUTS = [  # the registered ops check their arguments too (called directly)
    (torch.ops.attnkern.covpool, (torch.randn(2, 3),), ValueError, "expected a 3-D tensor"),
    (torch.ops.attnkern.covpool_backward, (torch.randn(2, 3, 3, device="meta"), torch.randn(2, 3, 4)), TypeError,
     "same device"),
    (torch.ops.attnkern.covpool_backward, (torch.randn(2, 4, 4), torch.randn(2, 3, 4)), ValueError,
     r"expected shape \[2, 3, 3\]"),
    (torch.ops.attnkern.covpool_backward, (torch.randn(2, 3, 3).double(), torch.randn(2, 3, 4)), TypeError, "same dtype"),
    (torch.ops.attnkern.sqrtm_newton_schulz, (torch.randn(2, 3, 3), 0), ValueError, r"iters must be in \[1, 1000\]"),
    (torch.ops.attnkern.sqrtm_newton_schulz, (torch.randn(2, 3, 4), 5), ValueError, "square matrices"),
    (torch.ops.attnkern.sqrtm_newton_schulz_backward,
     (torch.randn(2, 3, 3, device="meta"), torch.randn(2, 3, 3), torch.empty(0), 5), TypeError, "same device"),
    (torch.ops.attnkern.sqrtm_newton_schulz_backward,
     (torch.randn(2, 3, 3), torch.randn(2, 3, 3), torch.randn(4, 2, 3, 3), 2), ValueError,
     r"iterates: expected shape \[2, 2, 3, 3\]"),
    (torch.ops.attnkern.sqrtm_newton_schulz_backward,
     (torch.randn(2, 3, 3), torch.randn(2, 3, 3), torch.randn(2, 2, 3, 3).double(), 2), TypeError,
     "iterates: expected Float"),
    (torch.ops.attnkern.triuvec, (torch.ones(2, 3, 3, dtype=torch.int64),), TypeError, "floating-point"),
    (torch.ops.attnkern.triuvec_backward, (torch.randn(2, 5), 3), ValueError, r"expected shape \[2, 6\]"),
]


@pytest.mark.parametrize("op,args,exc,match", KERNEL_BAD_INPUTS)
def test_kernel_bad_inputs(op, args, exc, match):
    with pytest.raises(exc, match=match):
        op(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.randn(0, 4, 3, 3, device=device, requires_grad=True)
    cov = ops.covpool(x)
    assert cov.shape == (0, 4, 4)
    root = ops.sqrtm_newton_schulz(cov, 5)
    vec = ops.triuvec(root)
    assert root.shape == (0, 4, 4) and vec.shape == (0, 10)
    vec.sum().backward()
    assert x.grad.shape == x.shape



def test_sqrtm_iters_bound_answers_at_once():
    """iters = 2**62 used to reach a SymInt error (the iterate buffer's 3·iters − 1 matrices overflowed) and,
    without gradients, would have iterated for ever; up to 1000 iterations run."""
    a = torch.randn(2, 3, 3, dtype=torch.float64)
    a = a @ a.mT + torch.eye(3, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(ValueError, match=r"iters must be in \[1, 1000\]"):
        ops.sqrtm_newton_schulz(a, 2**62)
    root = ops.sqrtm_newton_schulz(a, 1000)
    torch.testing.assert_close(root @ root, a)

# ---- the SOCA layer ------------------------------------------------------------------------


class SeedSOCA(nn.Module):
    """SAN's SOCA as published: its sub-modules, and its forward written with the seed's
    formulation (centering-matrix covariance, Newton–Schulz, the published crop branches)."""

    def __init__(self, channel, reduction=8):
        super().__init__()
        self.max_pool = nn.MaxPool2d(kernel_size=2)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x):
        b, c, h, w = x.shape
        if h < 1000 and w < 1000:
            x_sub = x
        elif h < 1000 and w > 1000:
            x_sub = x[:, :, :, (w - 1000) // 2:(w - 1000) // 2 + 1000]
        elif w < 1000 and h > 1000:
            x_sub = x[:, :, (h - 1000) // 2:(h - 1000) // 2 + 1000, :]
        else:
            x_sub = x[:, :, (h - 1000) // 2:(h - 1000) // 2 + 1000, (w - 1000) // 2:(w - 1000) // 2 + 1000]
        cov = reference.covpool_centering_matrix(x_sub)
        root = reference.sqrtm_newton_schulz(cov, 5)
        return self.conv_du(root.mean(1).view(b, c, 1, 1)) * x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 16, 12, 9), (1, 32, 7, 7), (3, 8, 1, 5)])
def test_soca_matches_seed_module(device, shape):
    seed = SeedSOCA(shape[1], reduction=4).double().to(device)
    layer = SOCA(shape[1], reduction=4).double().to(device)
    layer.load_state_dict(seed.state_dict())
    x = torch.randn(shape, dtype=torch.float64, device=device)
    x_seed, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(shape, dtype=torch.float64, device=device)
    out_seed, out = seed(x_seed), layer(x_ours)
    assert rel_error(out, out_seed) <= 1e-10
    assert rel_error(out, x) > 1e-3  # the attention is not the identity here
    out_seed.backward(grad)
    out.backward(grad)
    assert rel_error(x_ours.grad, x_seed.grad) <= 1e-9
    assert_same_parameter_gradients(seed, layer)


def test_soca_crops_each_side_on_its_own():
    """A side of exactly 1000 is not cropped (the published code slices it with a negative offset)."""
    layer = SOCA(8, reduction=4).double()
    x = torch.randn(1, 8, 1000, 3, dtype=torch.float64)
    y = layer.conv_du(reference.sqrtm_newton_schulz(reference.covpool(x), 5).mean(1).view(1, 8, 1, 1))
    assert rel_error(layer(x), y * x) <= 1e-10
    x = torch.randn(1, 8, 1003, 2, dtype=torch.float64)
    y = layer.conv_du(reference.sqrtm_newton_schulz(reference.covpool(x[:, :, 1:1001]), 5).mean(1).view(1, 8, 1, 1))
    assert rel_error(layer(x), y * x) <= 1e-10


def test_soca_constant_input_is_finite():
    layer = SOCA(8, reduction=2)
    x = torch.ones(2, 8, 5, 5, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_soca_under_torch_compile():
    assert_compiles_like_eager(SOCA(16, reduction=4), torch.randn(2, 16, 9, 7))


def test_soca_bad_input():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        SOCA(8)(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match="channel // reduction"):
        SOCA(4, reduction=8)


def test_build_info():
    info = attnkern.build_info()
    assert set(info) >= {"cuda", "cuda_archs", "torch_version", "cuda_version"}
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["cuda"], bool) and (info["cuda_archs"] != "") == info["cuda"]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("iters", [1, 4])
def test_sqrtm_backward_recomputes_when_iterates_not_saved(device, dtype, iters):
    a = spd(3, 12, device=device).to(dtype)
    a[2] = 0  # zero trace on one matrix
    grad = torch.randn_like(a)
    _, iterates = torch.ops.attnkern.sqrtm_newton_schulz(a, iters, True)
    saved = torch.ops.attnkern.sqrtm_newton_schulz_backward(grad, a, iterates, iters)
    recomputed = torch.ops.attnkern.sqrtm_newton_schulz_backward(grad, a, a.new_empty(0), iters)
    assert iterates.shape == (max(3 * iters - 4, 0), 3, 12, 12)
    assert rel_error(recomputed, saved) <= TOLERANCE[dtype] and (saved[2] == 0).all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("n,iters", [(5, 1), (17, 4), (70, 3)])
def test_sqrtm_backward_leaves_its_inputs_alone(device, dtype, n, iters):
    """The backward works in matrices of its own: a, the incoming gradient (here strided) and the saved
    iterates come out unchanged, so a graph kept with retain_graph=True gives the same gradient again."""
    a = spd(2, n, device=device).to(dtype)
    grad = non_contiguous(torch.randn_like(a))
    _, iterates = torch.ops.attnkern.sqrtm_newton_schulz(a, iters, True)
    inputs = (a, grad, iterates)
    before = [t.clone() for t in inputs]
    first = torch.ops.attnkern.sqrtm_newton_schulz_backward(grad, a, iterates, iters)
    assert all(torch.equal(t, b) for t, b in zip(inputs, before))

    a_ref = a.to(torch.float64, copy=True).requires_grad_()
    reference.sqrtm_newton_schulz(a_ref, iters).backward(grad.double())
    assert rel_error(first, a_ref.grad) <= TOLERANCE[dtype] * (10 if dtype in (torch.float16, torch.bfloat16) else 1)
    a_k = a.clone().requires_grad_()
    out = ops.sqrtm_newton_schulz(a_k, iters)
    out.backward(grad, retain_graph=True)
    once = a_k.grad.clone()
    out.backward(grad)
    assert rel_error(a_k.grad, 2 * once) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_types_compute_in_float32(dtype):
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    cov = ops.covpool(x.to(dtype))
    assert cov.dtype == dtype and rel_error(cov, reference.covpool(x)) <= 1e-2
    a = spd(2, 6)
    root = ops.sqrtm_newton_schulz(a.to(dtype), 5)
    assert root.dtype == dtype and rel_error(root, reference.sqrtm_newton_schulz(a, 5)) <= 1e-2
    assert torch.equal(ops.triuvec(a.to(dtype)), reference.triuvec(a.to(dtype)))
