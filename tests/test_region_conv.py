"""region_conv family: region assignment (DRConv's asign_index)."""

import pytest
import torch

from attnkern import ops, reference
from conftest import DEVICE_DTYPES, DEVICES, TOLERANCE, rel_error

SHAPES = [(2, 3, 4, 5, 6), (1, 8, 16, 7, 3), (2, 1, 5, 4, 4), (1, 4, 1, 1, 9)]


def seed_gradients(outputs, guide, grad):
    """DRConv's hand-written asign_index backward, from its formulas."""
    mask = torch.zeros_like(guide).scatter_(1, guide.argmax(dim=1, keepdim=True), 1).unsqueeze(2)
    grad_outputs = grad.unsqueeze(1) * mask
    response = (grad.unsqueeze(1) * outputs).sum(dim=2)  # G_r
    s = guide.softmax(dim=1)
    return grad_outputs, s * (response - (s * response).sum(dim=1, keepdim=True))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients(device, dtype, shape):
    B, R, C, H, W = shape
    outputs = torch.randn(shape, dtype=torch.float64, device=device)
    guide = torch.randn(B, R, H, W, dtype=torch.float64, device=device)
    grad = torch.randn(B, C, H, W, dtype=torch.float64, device=device)
    o, g = outputs.to(dtype).requires_grad_(), guide.to(dtype).requires_grad_()
    out = ops.region_assign(o, g)
    assert out.shape == (B, C, H, W) and out.dtype == dtype
    selected = guide.to(dtype).argmax(dim=1)  # the kernel selects on the input's own values
    expected = outputs.gather(1, selected.view(B, 1, 1, H, W).expand(B, 1, C, H, W)).squeeze(1)
    assert rel_error(out, expected) <= TOLERANCE[dtype]
    out.backward(grad.to(dtype))
    seed_o, seed_g = seed_gradients(outputs, guide.to(dtype).double(), grad)
    assert rel_error(o.grad, seed_o) <= TOLERANCE[dtype]
    assert rel_error(g.grad, seed_g) <= TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(device):
    outputs = torch.randn(2, 5, 3, 4, 7, dtype=torch.float64, device=device, requires_grad=True)
    guide = torch.randn(2, 5, 4, 7, dtype=torch.float64, device=device, requires_grad=True)
    grad = torch.randn(2, 3, 4, 7, dtype=torch.float64, device=device)
    mine = ops.region_assign(outputs, guide)
    ref = reference.region_assign(outputs, guide)
    assert torch.equal(mine, ref)
    for a, b in zip(torch.autograd.grad(mine, (outputs, guide), grad), torch.autograd.grad(ref, (outputs, guide), grad)):
        assert rel_error(a, b) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_ties_and_nan_select_as_torch_argmax(device):
    guide = torch.randint(0, 2, (3, 4, 5, 5), device=device).double()  # many ties
    guide[0, 2, 1, 1] = float("nan")
    guide[1, 0, 2, 2] = float("nan")
    guide[1, 3, 2, 2] = float("nan")
    outputs = torch.randn(3, 4, 2, 5, 5, dtype=torch.float64, device=device)
    out = ops.region_assign(outputs, guide)
    selected = guide.argmax(dim=1)
    assert torch.equal(out, outputs.gather(1, selected.view(3, 1, 1, 5, 5).expand(3, 1, 2, 5, 5)).squeeze(1))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_outputs(device):
    outputs = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    guide = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda o: ops.region_assign(o, guide), (outputs,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    outputs = torch.randn(2, 3, 4, 5, 6, device=device, requires_grad=True)
    guide = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.attnkern.region_assign.default, (outputs, guide))
    grad = torch.randn(2, 4, 5, 6, device=device)
    torch.library.opcheck(torch.ops.attnkern.region_assign_backward.default, (grad, outputs.detach(), guide.detach()))


def test_under_torch_compile():
    outputs, guide = torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 5, 6)
    compiled = torch.compile(ops.region_assign, fullgraph=True)
    assert torch.equal(compiled(outputs, guide), ops.region_assign(outputs, guide))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    outputs = torch.randn(0, 3, 4, 5, 6, device=device, requires_grad=True)
    guide = torch.randn(0, 3, 5, 6, device=device, requires_grad=True)
    out = ops.region_assign(outputs, guide)
    assert out.shape == (0, 4, 5, 6)
    out.sum().backward()
    assert outputs.grad.shape == outputs.shape and guide.grad.shape == guide.shape


BAD_INPUTS = [
    ((torch.randn(2, 3, 4, 5, 6), torch.randn(2, 2, 5, 6)), ValueError, r"guide must be \[B, r, H, W\] = \[2, 3, 5, 6\]"),
    ((torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 5, 7)), ValueError, "guide must be"),
    ((torch.randn(3, 4, 5, 6), torch.randn(3, 5, 6)), ValueError, r"outputs must be \[B, r, C, H, W\]"),
    ((torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 5, 6).double()), TypeError, "share dtype"),
    ((torch.ones(2, 3, 4, 5, 6, dtype=torch.int64), torch.randn(2, 3, 5, 6)), TypeError, "floating-point"),
    ((torch.randn(2, 0, 4, 5, 6), torch.randn(2, 0, 5, 6)), ValueError, "at least one region"),
]


@pytest.mark.parametrize("args,exc,match", BAD_INPUTS)
def test_bad_inputs(args, exc, match):
    with pytest.raises(exc, match=match):
        ops.region_assign(*args)


def test_kernel_bad_inputs():
    with pytest.raises(RuntimeError, match="must agree in B, r, H and W"):
        torch.ops.attnkern.region_assign(torch.randn(2, 3, 4, 5, 6), torch.randn(2, 2, 5, 6))
    with pytest.raises(RuntimeError, match=r"grad: expected shape \[2, 4, 5, 6\]"):
        torch.ops.attnkern.region_assign_backward(torch.randn(2, 4, 5, 5), torch.randn(2, 3, 4, 5, 6),
                                                  torch.randn(2, 3, 5, 6))
