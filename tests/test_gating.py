"""gating family: channel_pool, spatial_pool, apply_gates (SE / CBAM poolings and gates), group_enhance (SGE)."""

import pytest
import torch

from attnkern import ops, reference
from conftest import DEVICE_DTYPES, DEVICES, TOLERANCE, rel_error

# Odd sizes, a batch of 1, pixel counts across the CPU kernels' 256-pixel blocks and 16-lane loops.
SHAPES = [(2, 3, 5, 7), (1, 8, 16, 16), (2, 5, 17, 19), (3, 1, 1, 1)]


def inputs(shape, device, dtype=torch.float64):
    """x, a channel gate and a pixel gate. For half types the values have few significant bits, so
    that x·gate is exact in the half type too and the reference finds the same tied maxima."""
    B, C, H, W = shape
    x = torch.randn(shape, dtype=torch.float64, device=device)
    cg = torch.rand(B, C, dtype=torch.float64, device=device) + 0.5
    pg = torch.rand(B, 1, H, W, dtype=torch.float64, device=device) + 0.5
    if dtype in (torch.float16, torch.bfloat16):
        x, cg, pg = (x * 4).round() / 4, (cg * 8).floor() / 8, (pg * 8).floor() / 8
    return x, cg, pg


def check_op_against_reference(fn, ref_fn, args, dtype, grad_args):
    """Forward of fn on args cast to dtype vs ref_fn in float64; gradients of every arg in grad_args."""
    cast = [a.to(dtype).requires_grad_(i in grad_args) if a is not None else None for i, a in enumerate(args)]
    refs = [a.to(dtype).double().requires_grad_(i in grad_args) if a is not None else None for i, a in enumerate(args)]
    out, expected = fn(*cast), ref_fn(*refs)
    outs, expecteds = (out, expected) if isinstance(out, tuple) else ((out,), (expected,))
    for o, e in zip(outs, expecteds):
        assert o.dtype == dtype and o.shape == e.shape
        assert rel_error(o, e) <= TOLERANCE[dtype]
    grads = [torch.randn_like(e) for e in expecteds]
    torch.autograd.backward([o for o in outs], [g.to(dtype) for g in grads])
    torch.autograd.backward(list(expecteds), grads)
    for i in grad_args:
        assert rel_error(cast[i].grad, refs[i].grad) <= TOLERANCE[dtype], f"gradient of argument {i}"


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_channel_pool(device, dtype, shape):
    x, _, _ = inputs(shape, device, dtype)
    check_op_against_reference(ops.channel_pool, reference.channel_pool, [x], dtype, {0})


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_gate", [True, False])
def test_spatial_pool(device, dtype, shape, with_gate):
    x, cg, _ = inputs(shape, device, dtype)
    args = [x, cg if with_gate else None]
    check_op_against_reference(ops.spatial_pool, reference.spatial_pool, args, dtype, {0, 1} if with_gate else {0})


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gates", ["channel", "pixel", "both"])
def test_apply_gates(device, dtype, shape, gates):
    x, cg, pg = inputs(shape, device, dtype)
    args = [x, cg if gates != "pixel" else None, pg if gates != "channel" else None]
    grad_args = {i for i, a in enumerate(args) if a is not None}
    check_op_against_reference(ops.apply_gates, reference.apply_gates, args, dtype, grad_args)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("grouping", ["one group", "a group a channel", "two groups"])
def test_group_enhance(device, dtype, shape, grouping):
    B, C, H, W = shape
    G = {"one group": 1, "a group a channel": C, "two groups": 2 if C % 2 == 0 else 1}[grouping]
    # Features of mean 1 (as after a ReLU): a group whose mean is near 0 has a similarity of near-zero spread,
    # whose normalisation amplifies every rounding error (the published layer's as much as the kernel's)
    x = torch.randn(shape, dtype=torch.float64, device=device) + 1
    weight, bias = (torch.randn(G, dtype=torch.float64, device=device) for _ in range(2))
    check_op_against_reference(lambda *t: ops.group_enhance(*t, G), lambda *t: reference.group_enhance(*t, G),
                               [x, weight, bias], dtype, (0, 1, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_group_enhance_constant_similarity_matches_the_published_layer(device):
    """A group of all-zero channels has a constant similarity (std 0): ĉ = 0, and no gradient passes through the
    std (autograd's convention); values and gradients equal the published layer's, all finite."""
    from attnkern.reference.modules import SeedSGE

    x = torch.randn(2, 6, 4, 5, dtype=torch.float64, device=device)
    x[0, 2:4] = 0  # sample 0, group 1
    seed = SeedSGE(3).double().to(device)
    seed.weight.data.normal_()
    seed.bias.data.normal_()
    leaves = [x.clone().requires_grad_(), seed.weight.detach().view(3).clone().requires_grad_(),
              seed.bias.detach().view(3).clone().requires_grad_()]
    x_seed = x.clone().requires_grad_()
    out, out_seed = ops.group_enhance(*leaves, 3), seed(x_seed)
    assert rel_error(out, out_seed) <= 1e-12
    grad = torch.randn_like(x)
    out.backward(grad)
    out_seed.backward(grad)
    for got, expected in zip([t.grad for t in leaves], [x_seed.grad, seed.weight.grad, seed.bias.grad]):
        assert got.isfinite().all() and rel_error(got, expected.view(got.shape)) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_types(dtype):
    x, cg, pg = inputs((2, 5, 17, 19), "cpu", dtype)
    check_op_against_reference(ops.channel_pool, reference.channel_pool, [x], dtype, {0})
    check_op_against_reference(ops.spatial_pool, reference.spatial_pool, [x, cg], dtype, {0, 1})
    check_op_against_reference(ops.apply_gates, reference.apply_gates, [x, cg, pg], dtype, {0, 1, 2})


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    x = torch.randn(2, 7, 6, 5, dtype=torch.float64, device=device).transpose(2, 3)  # [2, 7, 5, 6], strided
    cg = torch.rand(7, 2, dtype=torch.float64, device=device).t()
    pg = torch.rand(2, 1, 6, 5, dtype=torch.float64, device=device).transpose(2, 3)
    for a, b in zip(ops.channel_pool(x), reference.channel_pool(x)):
        assert rel_error(a, b) <= 1e-12
    assert rel_error(ops.spatial_pool(x, cg), reference.spatial_pool(x, cg)) <= 1e-12
    assert rel_error(ops.apply_gates(x, cg, pg), reference.apply_gates(x, cg, pg)) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_ties_share_the_max_gradient_as_amax(device):
    """Integer-valued inputs (many tied maxima, exact products): the max's gradient is split evenly
    between the tied elements, as torch.amax's is."""
    x = torch.randint(-2, 3, (2, 6, 5, 7), device=device).double()
    gate = torch.randint(1, 3, (2, 6), device=device).double()
    x[0, :, 0, 0] = 2.0  # every channel of a pixel ties, and a whole plane ties
    x[1, 3] = 1.0
    for fn, ref_fn, args in ((ops.channel_pool, reference.channel_pool, (x,)),
                             (ops.spatial_pool, reference.spatial_pool, (x, gate))):
        mine = [a.clone().requires_grad_() for a in args]
        refs = [a.clone().requires_grad_() for a in args]
        out, expected = fn(*mine), ref_fn(*refs)
        outs, expecteds = (out, expected) if isinstance(out, tuple) else ((out,), (expected,))
        grads = [torch.randn_like(e) for e in expecteds]
        torch.autograd.backward(list(outs), grads)
        torch.autograd.backward(list(expecteds), grads)
        for m, r in zip(mine, refs):
            assert rel_error(m.grad, r.grad) <= 1e-12
    # the tied plane: the max's gradient reaches all 35 positions, 1/35 each
    x1 = x.clone().requires_grad_()
    ops.channel_pool(x1)[1][1, 3].backward()
    assert torch.allclose(x1.grad[1, 3], torch.full((5, 7), 1 / 35, dtype=torch.float64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_nan_wins_the_max(device):
    x = torch.randn(2, 3, 5, 7, device=device)
    x[0, 1, 2, 3] = float("nan")
    mean, mx = ops.channel_pool(x)
    assert torch.isnan(mx[0, 1]) and torch.isnan(mean[0, 1]) and not torch.isnan(mx[1]).any()
    pooled = ops.spatial_pool(x)
    assert torch.isnan(pooled[0, :, 2, 3]).all() and torch.isnan(pooled).sum() == 2
    x[1, 0, 0, 0] = float("inf")
    x[1, 1, 0, 0] = float("-inf")  # inf + (−inf): the mean is NaN, the max is not
    assert ops.spatial_pool(x)[1, 1, 0, 0] == float("inf")


@pytest.mark.parametrize("device", DEVICES)
def test_nan_max_gets_a_nan_gradient(device):
    """As torch.amax: every element of a set whose maximum is NaN gets a NaN gradient (none did)."""
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, device=device)
    x[0, 1, 2, 3] = float("nan")
    for op, ref in ((ops.channel_pool, reference.channel_pool), (ops.spatial_pool, reference.spatial_pool)):
        mine, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        outs, refs = op(mine), ref(theirs)
        outs, refs = (outs, refs) if isinstance(outs, tuple) else ((outs,), (refs,))
        grads = [torch.randn_like(r) for r in refs]
        torch.autograd.backward(list(outs), grads)
        torch.autograd.backward(list(refs), grads)
        assert torch.equal(mine.grad.isnan(), theirs.grad.isnan()) and mine.grad.isnan().any()
        finite = ~theirs.grad.isnan()
        assert torch.allclose(mine.grad[finite], theirs.grad[finite])


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    x, cg, pg = (t.requires_grad_() for t in inputs((2, 3, 4, 5), device))
    assert torch.autograd.gradcheck(lambda t: ops.channel_pool(t), (x,))
    assert torch.autograd.gradcheck(ops.spatial_pool, (x, cg))
    assert torch.autograd.gradcheck(ops.apply_gates, (x, cg, pg))
    weight, bias = (torch.randn(3, dtype=torch.float64, device=device, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda *t: ops.group_enhance(*t, 3), (x, weight, bias))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, cg, pg = (t.float() for t in inputs((2, 3, 5, 6), device))
    opcheck = torch.library.opcheck
    ak = torch.ops.attnkern
    opcheck(ak.channel_pool.default, (x.requires_grad_(),))
    opcheck(ak.spatial_pool.default, (x, cg.requires_grad_()))
    opcheck(ak.spatial_pool.default, (x, None))
    opcheck(ak.apply_gates.default, (x, cg, pg.requires_grad_()))
    opcheck(ak.apply_gates.default, (x, None, pg))
    x, cg, pg = x.detach(), cg.detach(), pg.detach()
    mean, mx = ak.channel_pool(x)
    opcheck(ak.channel_pool_backward.default, (torch.randn_like(mean), torch.randn_like(mx), x, mx))
    opcheck(ak.channel_pool_backward.default, (torch.randn_like(mean), None, x, mx))
    pooled = ak.spatial_pool(x, cg)
    opcheck(ak.spatial_pool_backward.default, (torch.randn_like(pooled), x, cg, pooled))
    opcheck(ak.apply_gates_backward.default, (torch.randn_like(x), x, cg, pg))
    opcheck(ak.apply_gates_backward.default, (torch.randn_like(x), x, cg, None))
    weight, bias = torch.randn(3, device=device), torch.randn(3, device=device)
    opcheck(ak.group_enhance.default, (x.requires_grad_(), weight.requires_grad_(), bias, 3))
    opcheck(ak.group_enhance_backward.default, (torch.randn_like(x), x.detach(), weight.detach(), bias, 3))


def test_under_torch_compile():
    x, cg, pg = (t.float() for t in inputs((2, 3, 5, 6), "cpu"))

    def cbam_like(x, cg, pg):
        mean, mx = ops.channel_pool(x)
        return ops.apply_gates(x, cg * mean.sigmoid(), pg) + ops.spatial_pool(x, cg).sum() + \
            ops.group_enhance(x, cg[0], cg[1], 3)

    compiled = torch.compile(cbam_like, fullgraph=True, backend="aot_eager")
    assert rel_error(compiled(x, cg, pg), cbam_like(x, cg, pg)) <= 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.randn(0, 3, 4, 5, device=device, requires_grad=True)
    cg = torch.rand(0, 3, device=device, requires_grad=True)
    pg = torch.rand(0, 1, 4, 5, device=device, requires_grad=True)
    mean, mx = ops.channel_pool(x)
    assert mean.shape == mx.shape == (0, 3)
    pooled = ops.spatial_pool(x, cg)
    assert pooled.shape == (0, 2, 4, 5)
    out = ops.apply_gates(x, cg, pg)
    assert out.shape == x.shape
    (mean.sum() + mx.sum() + pooled.sum() + out.sum()).backward()
    assert x.grad.shape == x.shape and cg.grad.shape == cg.shape and pg.grad.shape == pg.shape



@pytest.mark.parametrize("hw", [(0, 4), (3, 0)])
@pytest.mark.parametrize("gates", ["pixel", "channel", "both"])
def test_apply_gates_backward_without_pixels(hw, gates):
    """H·W = 0 used to crash the backward with a pixel gate alone (the empty pixel gate's null data
    pointer sent it down the channel-gate-only branch, which read the absent channel gate)."""
    x = torch.randn(2, 3, *hw, dtype=torch.float64, requires_grad=True)
    cg = torch.randn(2, 3, dtype=torch.float64, requires_grad=True) if gates != "pixel" else None
    pg = torch.randn(2, 1, *hw, dtype=torch.float64, requires_grad=True) if gates != "channel" else None
    ops.apply_gates(x, cg, pg).sum().backward()
    assert x.grad.shape == x.shape
    if cg is not None:
        assert torch.equal(cg.grad, torch.zeros_like(cg))  # a sum over no pixels; NaN if unwritten (poisoned)
    if pg is not None:
        assert pg.grad.shape == pg.shape


@pytest.mark.parametrize("hw", [(0, 4), (3, 0)])
def test_spatial_pool_gate_gradient_without_pixels(hw):
    """The gate's gradient over no pixels is zero; it used to be left unwritten (torch.empty: values
    like 4.6e-310, or the NaN conftest fills it with)."""
    x = torch.randn(2, 3, *hw, dtype=torch.float64, requires_grad=True)
    gate = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    ops.spatial_pool(x, gate).sum().backward()
    assert torch.equal(gate.grad, torch.zeros_like(gate))
    pooled = torch.randn(2, 2, *hw, dtype=torch.float64)
    grad_x, grad_gate = torch.ops.attnkern.spatial_pool_backward(pooled, x.detach(), gate.detach(), pooled)
    assert torch.equal(grad_gate, torch.zeros_like(gate)) and grad_x.shape == x.shape

_x = torch.randn(2, 3, 4, 5)
BAD_INPUTS = [
    (ops.channel_pool, (torch.randn(3, 4, 5),), ValueError, r"x: expected a 4-D tensor \[B, C, H, W\], got shape \[3, 4, 5\]"),
    (ops.channel_pool, (torch.randn(2, 3, 0, 5),), ValueError, "at least one position"),
    (ops.channel_pool, (torch.ones(2, 3, 4, 5, dtype=torch.int64),), TypeError, "floating-point"),
    (ops.channel_pool, ([1.0],), TypeError, "must be a torch.Tensor"),
    (ops.spatial_pool, (torch.randn(2, 0, 4, 5),), ValueError, "at least one channel"),
    (ops.spatial_pool, (_x, torch.rand(2, 4)), ValueError, r"gate: expected shape \[B, C\] = \[2, 3\], got \[2, 4\]"),
    (ops.spatial_pool, (_x, torch.rand(2, 3).double()), TypeError, "gate and x must have the same dtype"),
    (ops.spatial_pool, (_x, 1.0), TypeError, "gate must be a torch.Tensor or None, got float"),
    (ops.apply_gates, (_x, None, None), ValueError, "got neither"),
    (ops.apply_gates, (_x, torch.rand(2, 3, 1, 1)), ValueError, r"channel_gate: expected shape \[B, C\]"),
    (ops.apply_gates, (_x, None, torch.rand(2, 4, 5)), ValueError,
     r"pixel_gate: expected shape \[B, 1, H, W\] = \[2, 1, 4, 5\]"),
    (ops.apply_gates, (_x, None, torch.rand(2, 1, 4, 5).double()), TypeError, "pixel_gate and x must have the same dtype"),
]


@pytest.mark.parametrize("fn,args,exc,match", BAD_INPUTS)
def test_bad_inputs(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


def test_kernel_bad_inputs():
    ak = torch.ops.attnkern
    with pytest.raises(ValueError, match=r"channel_pool: x: expected a 4-D tensor"):
        ak.channel_pool(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match=r"spatial_pool: gate: expected shape \[B, C\] = \[2, 3\]"):
        ak.spatial_pool(_x, torch.rand(3, 2))
    with pytest.raises(ValueError, match=r"apply_gates: needs a channel_gate, a pixel_gate or both"):
        ak.apply_gates(_x, None, None)
    with pytest.raises(ValueError, match=r"channel_pool_backward: max: expected shape \[2, 3\]"):
        ak.channel_pool_backward(None, torch.rand(2, 3), _x, torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"spatial_pool_backward: pooled: expected shape \[2, 2, 4, 5\]"):
        ak.spatial_pool_backward(torch.rand(2, 2, 4, 5), _x, None, torch.rand(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"apply_gates_backward: grad: expected shape \[2, 3, 4, 5\]"):
        ak.apply_gates_backward(torch.rand(2, 3, 4, 4), _x, torch.rand(2, 3), None)
    with pytest.raises(TypeError, match=r"apply_gates_backward: grad and x must have the same dtype"):
        ak.apply_gates_backward(torch.rand(2, 3, 4, 5).double(), _x, torch.rand(2, 3), None)
