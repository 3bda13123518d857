"""region_conv family: region assignment (DRConv's asign_index)."""

import pytest
import torch

from attnkern import nn as attnkern_nn
from attnkern import ops, reference
from conftest import (DEVICE_DTYPES, DEVICES, TOLERANCE, assert_compiles_like_eager, assert_same_parameter_gradients,
                      rel_error)

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


@pytest.mark.parametrize("device", DEVICES)
def test_reference_selects_as_argmax_with_nan_and_inf(device):
    """DRConv's asign_index is a gather: a NaN or +inf guide selects its region, an inf output is passed
    on. The reference is a gather too (a straight-through product would give NaN: inf·0, NaN − NaN)."""
    outputs = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, device=device)
    guide = torch.randn(2, 3, 5, 6, dtype=torch.float64, device=device)
    guide[0, 1, 2, 3], guide[1, 2, 0, 0], guide[1, 0, 4, 5] = float("nan"), float("inf"), float("-inf")
    outputs[0, 0, 1, 1, 1], outputs[1, 2, 3, 4, 5] = float("inf"), float("-inf")
    selected = guide.argmax(dim=1).view(2, 1, 1, 5, 6).expand(2, 1, 4, 5, 6)
    expected = outputs.gather(1, selected).squeeze(1)
    assert torch.equal(reference.region_assign(outputs, guide), expected)  # no NaN introduced
    assert torch.equal(ops.region_assign(outputs, guide), expected)


def test_reference_gradients_are_drconvs():
    outputs = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    got = torch.autograd.grad(reference.region_assign(outputs, guide), (outputs, guide), grad)
    for g, expected in zip(got, seed_gradients(outputs.detach(), guide.detach(), grad)):
        assert rel_error(g, expected) <= 1e-12


@pytest.mark.parametrize("B,Cout", [(0, 4), (2, 0)])
def test_dynamic_conv_empty_batch_or_output_channels(B, Cout):
    """No sample or no output channel: an empty output, like the reference's (whose grouped conv2d
    used to fail on groups = 0 or on too few filters)."""
    x, filters, guide = torch.randn(B, 3, 6, 5), torch.randn(B, 2, Cout, 3, 3, 3), torch.randn(B, 2, 4, 3)
    out, expected = ops.dynamic_region_conv(x, filters, guide), reference.dynamic_region_conv(x, filters, guide)
    assert out.shape == expected.shape == (B, Cout, 4, 3)


def test_reference_dynamic_conv_empty_batch():
    """The reference (what devices without kernels run) returns an empty batch too, with gradients."""
    x = torch.randn(0, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    filters = torch.randn(0, 2, 4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(0, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    out = reference.dynamic_region_conv(x, filters, guide, stride=2, padding=1)
    assert out.shape == (0, 4, 3, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape and filters.grad.shape == filters.shape and guide.grad.shape == guide.shape


BAD_INPUTS = [
    ((torch.randn(2, 3, 4, 5, 6), torch.randn(2, 2, 5, 6)), ValueError,
     r"outputs \[B, r, C, H, W\] and guide \[B, r, H, W\] must agree in B, r, H and W, got \[2, 3, 4, 5, 6\] and \[2, 2, 5, 6\]"),
    ((torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 5, 7)), ValueError, "must agree in B, r, H and W"),
    ((torch.randn(3, 4, 5, 6), torch.randn(3, 5, 6)), ValueError, r"outputs: expected a 5-D tensor \[B, r, C, H, W\]"),
    ((torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 5, 6).double()), TypeError, "outputs and guide must have the same dtype"),
    ((torch.ones(2, 3, 4, 5, 6, dtype=torch.int64), torch.randn(2, 3, 5, 6)), TypeError, "floating-point"),
    ((torch.randn(2, 0, 4, 5, 6), torch.randn(2, 0, 5, 6)), ValueError, r"at least one region \(r >= 1\)"),
]


@pytest.mark.parametrize("args,exc,match", BAD_INPUTS)
def test_bad_inputs(args, exc, match):
    with pytest.raises(exc, match=match):
        ops.region_assign(*args)


def test_kernel_bad_inputs():
    with pytest.raises(ValueError, match="must agree in B, r, H and W"):
        torch.ops.attnkern.region_assign(torch.randn(2, 3, 4, 5, 6), torch.randn(2, 2, 5, 6))
    with pytest.raises(ValueError, match=r"grad: expected shape \[2, 4, 5, 6\]"):
        torch.ops.attnkern.region_assign_backward(torch.randn(2, 4, 5, 5), torch.randn(2, 3, 4, 5, 6),
                                                  torch.randn(2, 3, 5, 6))


# ---- dynamic_region_conv -------------------------------------------------------------------

# (B, Cin, Cout, H, W, k, r, stride, padding, dilation)
CONV_CASES = [
    (2, 3, 4, 7, 6, 3, 3, 1, 1, 1),
    (1, 2, 5, 9, 9, 3, 8, 2, 0, 1),
    (2, 4, 3, 6, 5, 1, 1, 1, 0, 1),
    (1, 3, 2, 8, 7, 3, 2, 2, 1, 2),
    (3, 2, 2, 5, 5, 1, 8, 2, 0, 1),
]


def conv_inputs(case, device, dtype=torch.float64):
    B, Ci, Co, H, W, k, r, s, p, d = case
    Ho, Wo = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
    x = torch.randn(B, Ci, H, W, dtype=dtype, device=device)
    filters = torch.randn(B, r, Co, Ci, k, k, dtype=dtype, device=device)
    guide = torch.randn(B, r, Ho, Wo, dtype=dtype, device=device)
    return x, filters, guide, dict(stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_dynamic_conv_matches_seed_composition(device, dtype, case):
    x, filters, guide, geometry = conv_inputs(case, device)
    guide = guide.to(dtype).double()  # select on the values the kernel sees
    refs = [t.clone().requires_grad_() for t in (x, filters, guide)]
    expected = reference.dynamic_region_conv(*refs, **geometry)
    mine = [t.to(dtype).requires_grad_() for t in (x, filters, guide)]
    out = ops.dynamic_region_conv(*mine, **geometry)
    assert out.shape == expected.shape and out.dtype == dtype
    assert rel_error(out, expected) <= TOLERANCE[dtype]
    grad = torch.randn_like(expected)
    expected.backward(grad)
    out.backward(grad.to(dtype))
    for name, r, m in zip(("x", "filters", "guide"), refs, mine):
        assert rel_error(m.grad, r.grad) <= TOLERANCE[dtype], name


@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_conv_ties_and_one_region(device):
    x, filters, guide, geometry = conv_inputs((2, 3, 4, 6, 6, 3, 4, 1, 1, 1), device)
    guide = torch.randint(0, 2, guide.shape, device=device).double()  # ties everywhere
    assert rel_error(ops.dynamic_region_conv(x, filters, guide, **geometry),
                     reference.dynamic_region_conv(x, filters, guide, **geometry)) <= 1e-12
    x, filters, guide, geometry = conv_inputs((2, 3, 4, 6, 6, 3, 1, 1, 1, 1), device)
    plain = torch.stack([torch.nn.functional.conv2d(x[b:b + 1], filters[b, 0], padding=1)[0] for b in range(2)])
    assert rel_error(ops.dynamic_region_conv(x, filters, guide, **geometry), plain) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_conv_gradcheck(device):
    x, filters, guide, geometry = conv_inputs((1, 2, 2, 5, 4, 3, 3, 2, 1, 1), device)
    x.requires_grad_()
    filters.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, f: ops.dynamic_region_conv(a, f, guide, **geometry), (x, filters))


@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_conv_opcheck(device):
    x, filters, guide, _ = conv_inputs((2, 3, 4, 6, 5, 3, 3, 1, 1, 1), device, torch.float32)
    args = (x.requires_grad_(), filters.requires_grad_(), guide.requires_grad_(), [1, 1], [1, 1], [1, 1])
    torch.library.opcheck(torch.ops.attnkern.dynamic_region_conv.default, args)
    grad = torch.randn(2, 4, 6, 5, device=device)
    torch.library.opcheck(torch.ops.attnkern.dynamic_region_conv_backward.default,
                          (grad, x.detach(), filters.detach(), guide.detach(), [1, 1], [1, 1], [1, 1]))


def test_dynamic_conv_under_torch_compile():
    x, filters, guide, geometry = conv_inputs((2, 3, 4, 6, 5, 3, 3, 1, 1, 1), "cpu", torch.float32)
    compiled = torch.compile(lambda a, f, g: ops.dynamic_region_conv(a, f, g, **geometry), fullgraph=True)
    assert rel_error(compiled(x, filters, guide), ops.dynamic_region_conv(x, filters, guide, **geometry)) <= 1e-6


_x6, _f3 = torch.randn(2, 3, 6, 6), torch.randn(2, 4, 5, 3, 3, 3)
CONV_BAD_INPUTS = [
    ((_x6, torch.randn(2, 4, 5, 2, 3, 3), torch.randn(2, 4, 4, 4)), {}, ValueError, "must match x .* in B and Cin"),
    ((_x6, _f3, torch.randn(2, 4, 6, 6)), {}, ValueError, r"guide must have the output's spatial size \[H', W'\] = \[4, 4\]"),
    ((_x6, _f3, torch.randn(2, 3, 4, 4)), {}, ValueError, "guide .* must match filters in B and r"),
    ((torch.randn(3, 6, 6), _f3, torch.randn(2, 4, 4, 4)), {}, ValueError, r"x: expected a 4-D tensor \[B, Cin, H, W\]"),
    ((_x6, _f3, torch.randn(2, 4, 6, 6)), {"padding": (1, 1, 1)}, TypeError, "padding must be an int or a pair of ints"),
    ((_x6, _f3.double(), torch.randn(2, 4, 4, 4)), {}, TypeError, "x and filters must have the same dtype"),
    ((_x6, _f3, torch.randn(2, 4, 4, 4)), {"stride": 0}, ValueError, r"stride must be >= 1, got \[0, 0\]"),
    ((_x6, _f3, torch.randn(2, 4, 4, 4)), {"dilation": (1, 0)}, ValueError, r"dilation must be >= 1, got \[1, 0\]"),
    ((_x6, _f3, torch.randn(2, 4, 4, 4)), {"padding": -1}, ValueError, r"padding must be >= 0, got \[-1, -1\]"),
]


@pytest.mark.parametrize("args,kwargs,exc,match", CONV_BAD_INPUTS)
def test_dynamic_conv_bad_inputs(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ops.dynamic_region_conv(*args, **kwargs)


def test_dynamic_conv_kernel_bad_inputs():
    op = torch.ops.attnkern.dynamic_region_conv
    with pytest.raises(ValueError, match=r"guide must have the output's spatial size \[H', W'\] = \[4, 4\]"):
        op(_x6, _f3, torch.randn(2, 4, 6, 6), [1, 1], [0, 0], [1, 1])
    with pytest.raises(ValueError, match=r"stride must be >= 1, got \[0, 1\]"):
        op(_x6, _f3, torch.randn(2, 4, 4, 4), [0, 1], [0, 0], [1, 1])
    with pytest.raises(TypeError, match="dynamic_region_conv_backward: grad and x must have the same dtype"):
        torch.ops.attnkern.dynamic_region_conv_backward(torch.randn(2, 5, 4, 4).double(), _x6, _f3,
                                                        torch.randn(2, 4, 4, 4), [1, 1], [0, 0], [1, 1])


# ---- the DRConv2d layer --------------------------------------------------------------------


class SeedDRConv2d(torch.nn.Module):
    """DRConv's published module: its sub-modules, and its forward as published — every region's
    per-sample convolution, then asign_index (here the references of both)."""

    def __init__(self, in_channels, out_channels, kernel_size, region_num=8, **kwargs):
        super().__init__()
        self.region_num = region_num
        self.conv_kernel = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d((kernel_size, kernel_size)),
            torch.nn.Conv2d(in_channels, region_num * region_num, kernel_size=1),
            torch.nn.Sigmoid(),
            torch.nn.Conv2d(region_num * region_num, region_num * in_channels * out_channels, kernel_size=1,
                            groups=region_num),
        )
        self.conv_guide = torch.nn.Conv2d(in_channels, region_num, kernel_size=kernel_size, **kwargs)
        self.kwargs = kwargs

    def forward(self, x):
        kernel = self.conv_kernel(x)
        B, _, k, _ = kernel.shape
        filters = kernel.view(B, self.region_num, -1, x.shape[1], k, k)
        outputs = reference.region_correlation(x, filters, **self.kwargs)
        return reference.region_assign(outputs, self.conv_guide(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("args,kwargs,shape", [
    ((4, 6, 3, 8), {"padding": 1}, (2, 4, 9, 7)),
    ((3, 5, 1, 3), {}, (2, 3, 6, 6)),
    ((4, 4, 3, 1), {"stride": 2}, (1, 4, 11, 9)),
])
def test_drconv2d_matches_seed_module(device, args, kwargs, shape):
    seed = SeedDRConv2d(*args, **kwargs).double().to(device)
    layer = attnkern_nn.DRConv2d(*args, **kwargs).double().to(device)
    layer.load_state_dict(seed.state_dict())
    x = torch.randn(shape, dtype=torch.float64, device=device)
    x_seed, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_seed, out = seed(x_seed), layer(x_ours)
    assert rel_error(out, out_seed) <= 1e-10
    grad = torch.randn_like(out)
    out_seed.backward(grad)
    out.backward(grad)
    assert rel_error(x_ours.grad, x_seed.grad) <= 1e-10
    assert_same_parameter_gradients(seed, layer)


def test_drconv2d_under_torch_compile():
    assert_compiles_like_eager(attnkern_nn.DRConv2d(4, 6, 3, region_num=4, padding=1), torch.randn(2, 4, 8, 7), 1e-5)


def test_drconv2d_bad_arguments():
    with pytest.raises(TypeError, match="unsupported arguments"):
        attnkern_nn.DRConv2d(4, 4, 3, bias=False)
    with pytest.raises(ValueError, match="region_num must be >= 1"):
        attnkern_nn.DRConv2d(4, 4, 3, region_num=0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        attnkern_nn.DRConv2d(4, 4, 3)(torch.randn(4, 8, 8))


def test_dynamic_region_conv_backward_on_several_threads():
    """The CPU kernel's per-sample ATen calls run on OpenMP workers: they must keep the caller's autograd state."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        options = dict(dtype=torch.float64, requires_grad=True)
        x, filters, guide = torch.randn(4, 3, 6, 5, **options), torch.randn(4, 2, 4, 3, 3, 3, **options), \
            torch.randn(4, 2, 6, 5, **options)
        ops.dynamic_region_conv(x, filters, guide, padding=1).sum().backward()
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (x, filters, guide))
    finally:
        torch.set_num_threads(threads)
