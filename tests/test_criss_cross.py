"""criss_cross family: affinity, aggregation and its transpose (CCNet)."""

import math

import pytest
import torch

from attnkern import nn as attnkern_nn
from attnkern import ops, reference
from conftest import (DEVICE_DTYPES, DEVICES, TOLERANCE, assert_compiles_like_eager, assert_same_parameter_gradients,
                      rel_error)

SHAPES = [(2, 5, 4, 7), (1, 3, 9, 9), (2, 4, 1, 6), (1, 6, 5, 1), (3, 2, 2, 3), (1, 1, 1, 1)]
agg_t = torch.ops.attnkern.criss_cross_aggregate_transposed


def inputs(shape, channels_v, device, dtype=torch.float64):
    B, C, H, W = shape
    q, k = torch.randn(B, C, H, W, dtype=dtype, device=device), torch.randn(B, C, H, W, dtype=dtype, device=device)
    v = torch.randn(B, channels_v, H, W, dtype=dtype, device=device)
    attn = torch.randn(B, H + W - 1, H, W, dtype=dtype, device=device).softmax(1)
    return q, k, v, attn


def seed_criss_cross(q, k, v):
    """CCNet's published formulation: column energies with −inf on the diagonal, row energies,
    one softmax over both, out_H + out_W (written here from the paper's equations)."""
    B, _, H, W = q.shape
    energy_h = torch.einsum("bchw,bcyw->bhwy", q, k)  # [B, H, W, H]: column y of pixel (h, w)
    diagonal = torch.eye(H, dtype=torch.bool, device=q.device).view(1, H, 1, H)
    energy_h = energy_h.masked_fill(diagonal, float("-inf"))
    energy_w = torch.einsum("bchw,bchx->bhwx", q, k)  # [B, H, W, W]: row x of pixel (h, w)
    attn = torch.cat([energy_h, energy_w], dim=3).softmax(dim=3)
    out_h = torch.einsum("bhwy,bcyw->bchw", attn[..., :H], v)
    out_w = torch.einsum("bhwx,bchx->bchw", attn[..., H:], v)
    return out_h + out_w


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
def test_layout_matches_ccnet(device, shape):
    q, k, v, _ = inputs(shape, 3, device)
    attn = ops.criss_cross_affinity(q, k).softmax(dim=1)
    assert rel_error(ops.criss_cross_aggregate(attn, v), seed_criss_cross(q, k, v)) <= 1e-12


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward(device, dtype, shape):
    q, k, v, attn = inputs(shape, 5, device)
    energy = ops.criss_cross_affinity(q.to(dtype), k.to(dtype))
    assert energy.shape == (shape[0], shape[2] + shape[3] - 1, shape[2], shape[3]) and energy.dtype == dtype
    assert rel_error(energy, reference.criss_cross_affinity(q, k)) <= TOLERANCE[dtype]
    out = ops.criss_cross_aggregate(attn.to(dtype), v.to(dtype))
    assert out.shape == v.shape and out.dtype == dtype
    assert rel_error(out, reference.criss_cross_aggregate(attn, v)) <= TOLERANCE[dtype]
    assert rel_error(agg_t(attn.to(dtype), v.to(dtype)), reference.criss_cross_aggregate_transposed(attn, v)) \
        <= TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous(device):
    q, k, v, attn = inputs((2, 4, 6, 5), 3, device, torch.float32)
    q_nc, v_nc = q.transpose(2, 3).contiguous().transpose(2, 3), v[:, ::2]
    attn_nc = attn.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not (q_nc.is_contiguous() or v_nc.is_contiguous() or attn_nc.is_contiguous())
    assert rel_error(ops.criss_cross_affinity(q_nc, k), reference.criss_cross_affinity(q.double(), k.double())) <= 1e-5
    assert rel_error(ops.criss_cross_aggregate(attn_nc, v_nc),
                     reference.criss_cross_aggregate(attn.double(), v_nc.double())) <= 1e-5


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 4, 7), (1, 3, 1, 6), (2, 2, 5, 5)])
def test_backward(device, dtype, shape):
    q, k, v, attn = inputs(shape, 4, device)
    refs = [t.clone().requires_grad_() for t in (q, k, v, attn)]
    mine = [t.to(dtype).requires_grad_() for t in (q, k, v, attn)]
    grad_e = torch.randn(shape[0], shape[2] + shape[3] - 1, shape[2], shape[3], dtype=torch.float64, device=device)
    grad_o = torch.randn_like(v)
    (reference.criss_cross_affinity(refs[0], refs[1]) * grad_e).sum().backward()
    (reference.criss_cross_aggregate(refs[3], refs[2]) * grad_o).sum().backward()
    (ops.criss_cross_affinity(mine[0], mine[1]) * grad_e.to(dtype)).sum().backward()
    (ops.criss_cross_aggregate(mine[3], mine[2]) * grad_o.to(dtype)).sum().backward()
    for name, r, m in zip("qkva", refs, mine):
        assert rel_error(m.grad, r.grad) <= TOLERANCE[dtype], name


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    q, k, v, attn = inputs((2, 3, 3, 4), 2, device)
    for t in (q, k, v, attn):
        t.requires_grad_()
    assert torch.autograd.gradcheck(ops.criss_cross_affinity, (q, k))
    assert torch.autograd.gradcheck(ops.criss_cross_aggregate, (attn, v))
    assert torch.autograd.gradcheck(agg_t, (attn, v))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    q, k, v, attn = inputs((2, 3, 4, 5), 6, device, torch.float32)
    cases = [
        (torch.ops.attnkern.criss_cross_affinity.default, (q.requires_grad_(), k.requires_grad_())),
        (torch.ops.attnkern.criss_cross_aggregate.default, (attn.clone().requires_grad_(), v.requires_grad_())),
        (torch.ops.attnkern.criss_cross_aggregate_transposed.default, (attn.clone().requires_grad_(), v)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_under_torch_compile():
    def attention(q, k, v):
        return ops.criss_cross_aggregate(ops.criss_cross_affinity(q, k).softmax(dim=1), v)

    q, k, v, _ = inputs((2, 4, 5, 6), 3, "cpu", torch.float32)
    compiled = torch.compile(attention, fullgraph=True)
    assert rel_error(compiled(q, k, v), seed_criss_cross(q.double(), k.double(), v.double())) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    q, k, v, attn = inputs((0, 3, 4, 5), 2, device)
    assert ops.criss_cross_affinity(q, k).shape == (0, 8, 4, 5)
    assert ops.criss_cross_aggregate(attn, v).shape == (0, 2, 4, 5)


@pytest.mark.parametrize("H,W", [(0, 3), (3, 0)])
def test_image_without_rows_or_columns(H, W):
    """H = 0 or W = 0: maps of H + W − 1 positions over no pixels, as the reference's (whose position
    table used to fail on arange(H − 1))."""
    q, k, v, attn = inputs((2, 4, H, W), 5, "cpu")
    assert reference.criss_cross_positions(H, W).shape == (H + W - 1, H, W)
    for fn, args in ((ops.criss_cross_affinity, (q, k)), (ops.criss_cross_aggregate, (attn, v)),
                     (ops.criss_cross_attention, (q, k, v))):
        out, expected = fn(*args), getattr(reference, fn.__name__)(*args)
        assert out.shape == expected.shape and out.numel() == 0


BAD_INPUTS = [
    (ops.criss_cross_affinity, (torch.randn(1, 4, 3, 3), torch.randn(1, 2, 3, 3)), ValueError,
     r"q and k must have the same shape \[B, C, H, W\], got \[1, 4, 3, 3\] and \[1, 2, 3, 3\]"),
    (ops.criss_cross_affinity, (torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 4)), ValueError, "same shape"),
    (ops.criss_cross_affinity, (torch.randn(4, 3, 3), torch.randn(4, 3, 3)), ValueError,
     r"q: expected a 4-D tensor \[B, C, H, W\], got shape \[4, 3, 3\]"),
    (ops.criss_cross_affinity, (torch.ones(1, 4, 3, 3, dtype=torch.int64),) * 2, TypeError, "floating-point"),
    (ops.criss_cross_affinity, (torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3).double()), TypeError,
     "q and k must have the same dtype, got Float and Double"),
    (ops.criss_cross_affinity, (torch.randn(1, 4, 0, 0), torch.randn(1, 4, 0, 0)), ValueError,
     "H and W cannot both be 0"),
    (ops.criss_cross_aggregate, (torch.randn(1, 4, 3, 3), torch.randn(1, 2, 3, 3)), ValueError,
     r"H \+ W - 1 = 5 positions in dim 1 for H = 3, W = 3, got 4"),
    (ops.criss_cross_aggregate, (torch.randn(1, 6, 3, 4), torch.randn(1, 2, 3, 3)), ValueError,
     "attn and v must share batch and spatial size"),
    (ops.criss_cross_aggregate, (torch.randn(1, 5, 3, 3), torch.randn(2, 3, 3)), ValueError,
     r"v: expected a 4-D tensor \[B, C, H, W\]"),
    (ops.criss_cross_aggregate, (torch.randn(1, 5, 3, 3), "v"), TypeError, "v must be a torch.Tensor, got str"),
]


@pytest.mark.parametrize("fn,args,exc,match", BAD_INPUTS)
def test_bad_inputs(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


KERNEL_BAD_INPUTS = [
    (torch.ops.attnkern.criss_cross_affinity, (torch.randn(1, 4, 3, 3), torch.randn(1, 2, 3, 3)), ValueError, "same shape"),
    (torch.ops.attnkern.criss_cross_aggregate, (torch.randn(1, 4, 3, 3), torch.randn(1, 2, 3, 3)), ValueError,
     "H \\+ W - 1 = 5 positions"),
    (torch.ops.attnkern.criss_cross_aggregate_transposed, (torch.randn(1, 5, 3, 3), torch.randn(1, 2, 3, 4)), ValueError,
     "share batch and spatial size"),
    (torch.ops.attnkern.criss_cross_aggregate, (torch.randn(1, 5, 3, 3), torch.randn(1, 2, 3, 3).double()), TypeError,
     "same dtype"),
]


@pytest.mark.parametrize("op,args,exc,match", KERNEL_BAD_INPUTS)
def test_kernel_bad_inputs(op, args, exc, match):
    with pytest.raises(exc, match=match):
        op(*args)


# ---- the fused op --------------------------------------------------------------------------

# (2, 3, 45, 37): the CPU kernel's column blocks of 16 columns (16, 16, 5), the last one partial, and C·H rows
# (q: 135, v: 180 or 225) that end in a partial 16-row staging tile.
FUSED_SHAPES = [(2, 3, 4, 7), (1, 2, 9, 9), (2, 4, 1, 6), (1, 3, 5, 1), (1, 1, 1, 1), (3, 2, 13, 6), (2, 3, 45, 37)]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_attention_forward(device, dtype, shape):
    q, k, v, _ = inputs(shape, 5, device)
    q = q * 2  # sharper softmax
    out = ops.criss_cross_attention(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.shape == v.shape and out.dtype == dtype
    expected = reference.criss_cross_attention(q, k, v)
    assert rel_error(out, expected) <= TOLERANCE[dtype]
    assert rel_error(out, seed_criss_cross(q, k, v)) <= TOLERANCE[dtype]
    two_op = ops.criss_cross_aggregate(ops.criss_cross_affinity(q, k).softmax(dim=1), v)
    assert rel_error(two_op, expected) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_attention_with_a_block_of_minus_inf_energies(device):
    """A pixel whose column energies are all −inf (q·k against an infinite k) weighs its row alone; the
    CPU kernel's column block used to compute exp(−inf − (−inf)) = NaN there (found by
    test_properties.py)."""
    q = torch.tensor([1.5, -0.25], device=device).view(1, 1, 2, 1)
    k = torch.tensor([math.inf, -0.25], device=device).view(1, 1, 2, 1)
    v = torch.tensor([1.0, 2.0], device=device).view(1, 1, 2, 1)
    out = ops.criss_cross_attention(q, k, v)
    expected = reference.criss_cross_attention(q.double(), k.double(), v.double())
    assert torch.isnan(out[0, 0, 0, 0]) and torch.isnan(expected[0, 0, 0, 0])  # its own energy is +inf
    assert out[0, 0, 1, 0] == expected[0, 0, 1, 0] == 2.0  # energy −inf to row 0: all weight on itself
    # pixels of row 0: their whole row block is −inf, their column block is not
    q = torch.ones(1, 1, 2, 2, device=device)
    k = torch.tensor([[-math.inf, -math.inf], [0.5, 0.25]], device=device).view(1, 1, 2, 2)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]], device=device).view(1, 1, 2, 2)
    out = ops.criss_cross_attention(q, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference.criss_cross_attention(q.double(), k.double(), v.double()).float())
    k[0, 0, 0, 0] = math.nan  # a NaN energy among −inf ones still makes the output NaN, as softmax's
    out = ops.criss_cross_attention(q, k, v)
    assert torch.equal(out.isnan(), reference.criss_cross_attention(q, k, v).isnan()) and out.isnan().any()


@pytest.mark.parametrize("device", DEVICES)
def test_attention_with_minus_inf_and_nan_energies_in_whole_vectors(device):
    """As above on a 20×20 image, where the CPU kernel's softmax numerators take whole vectors (up to 16
    lanes) before the remainder: image row 0 of k is −inf, so the pixels of row 0 have an all −inf row block
    and every other pixel −inf entries among finite ones; then one NaN in k."""
    q = torch.rand(2, 3, 20, 20, device=device) + 0.5
    k = torch.randn(2, 3, 20, 20, device=device)
    v = torch.randn(2, 4, 20, 20, device=device)
    k[:, :, 0] = -math.inf
    out = ops.criss_cross_attention(q, k, v)
    expected = reference.criss_cross_attention(q.double(), k.double(), v.double())
    assert torch.isfinite(out).all()
    assert rel_error(out, expected) <= 1e-5
    k[1, 2, 9, 13] = math.nan
    out = ops.criss_cross_attention(q, k, v)
    expected = reference.criss_cross_attention(q.double(), k.double(), v.double())
    assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().any() and not out.isnan().all()
    assert rel_error(out[~out.isnan()], expected[~expected.isnan()]) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_attention_lse(device):
    q, k, v, _ = inputs((2, 3, 5, 6), 4, device)
    out, lse = torch.ops.attnkern.criss_cross_attention(q, k, v)
    assert lse.shape == (2, 5, 6)
    assert rel_error(lse, reference.criss_cross_affinity(q, k).logsumexp(dim=1)) <= 1e-12


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_attention_backward(device, dtype, shape):
    q, k, v, _ = inputs(shape, 4, device)
    grad = torch.randn_like(v)
    refs = [t.clone().requires_grad_() for t in (q, k, v)]
    reference.criss_cross_attention(*refs).backward(grad)
    mine = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    ops.criss_cross_attention(*mine).backward(grad.to(dtype))
    # With one position (a 1×1 image) the weight is 1 and q, k get exactly zero gradient, the kernel a
    # rounding residue: measure every error against v's gradient too (the scale of grad·weights).
    scale = refs[2].grad.norm().item()
    for name, r, m in zip("qkv", refs, mine):
        assert (m.grad.double() - r.grad).norm().item() <= TOLERANCE[dtype] * max(r.grad.norm().item(), scale), name


@pytest.mark.parametrize("device", DEVICES)
def test_attention_gradcheck(device):
    q, k, v, _ = inputs((2, 2, 3, 4), 3, device)
    assert torch.autograd.gradcheck(ops.criss_cross_attention, tuple(t.requires_grad_() for t in (q, k, v)))


@pytest.mark.parametrize("device", DEVICES)
def test_attention_opcheck(device):
    q, k, v, _ = inputs((2, 3, 4, 5), 6, device, torch.float32)
    torch.library.opcheck(torch.ops.attnkern.criss_cross_attention.default,
                          tuple(t.requires_grad_() for t in (q, k, v)))
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse = torch.ops.attnkern.criss_cross_attention(q, k, v)
    torch.library.opcheck(torch.ops.attnkern.criss_cross_attention_backward.default,
                          (torch.randn_like(out), q, k, v, out, lse))


ATTENTION_BAD_INPUTS = [
    ((torch.randn(1, 4, 3, 3), torch.randn(1, 2, 3, 3), torch.randn(1, 5, 3, 3)), ValueError,
     "q and k must have the same shape"),
    ((torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), torch.randn(1, 5, 3, 4)), ValueError,
     r"v \[B, C', H, W\] must share batch and spatial size with q, got \[1, 5, 3, 4\] and \[1, 2, 3, 3\]"),
    ((torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), torch.randn(5, 3, 3)), ValueError, r"v: expected a 4-D tensor"),
    ((torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), torch.randn(1, 5, 3, 3).double()), TypeError,
     "q and v must have the same dtype"),
    ((torch.randn(2, 3, 3), torch.randn(2, 3, 3), torch.randn(2, 3, 3)), ValueError, r"\[B, C, H, W\]"),
    ((torch.randn(1, 2, 0, 0), torch.randn(1, 2, 0, 0), torch.randn(1, 5, 0, 0)), ValueError, "H and W cannot both be 0"),
]


@pytest.mark.parametrize("args,exc,match", ATTENTION_BAD_INPUTS)
def test_attention_bad_inputs(args, exc, match):
    with pytest.raises(exc, match=match):
        ops.criss_cross_attention(*args)


def test_attention_kernel_bad_inputs():
    q, k, v = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), torch.randn(1, 5, 3, 4)
    with pytest.raises(ValueError, match="v .* must share batch and spatial size"):
        torch.ops.attnkern.criss_cross_attention(q, k, v)
    v = torch.randn(1, 5, 3, 3)
    out, lse = torch.ops.attnkern.criss_cross_attention(q, k, v)
    with pytest.raises(ValueError, match=r"lse: expected shape \[1, 3, 3\]"):
        torch.ops.attnkern.criss_cross_attention_backward(out, q, k, v, out, lse[:, :2])


# ---- the layer -----------------------------------------------------------------------------


class SeedCrissCross(torch.nn.Module):
    """CCNet's published module: its parameters, and its forward through the published formulation
    (seed_criss_cross above)."""

    def __init__(self, in_dim):
        super().__init__()
        self.query_conv = torch.nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.key_conv = torch.nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.value_conv = torch.nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.softmax = torch.nn.Softmax(dim=3)
        self.gamma = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = seed_criss_cross(self.query_conv(x), self.key_conv(x), self.value_conv(x))
        return self.gamma * out + x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,recurrence", [((2, 16, 7, 5), 1), ((1, 32, 6, 6), 2), ((2, 8, 1, 9), 1)])
def test_layer_matches_seed_module(device, shape, recurrence):
    seed = SeedCrissCross(shape[1]).double().to(device)
    with torch.no_grad():
        seed.gamma.fill_(0.7)  # at gamma = 0 the layer is the identity: test something
    layer = attnkern_nn.CrissCrossAttention(shape[1], recurrence=recurrence).double().to(device)
    layer.load_state_dict(seed.state_dict())
    x = torch.randn(shape, dtype=torch.float64, device=device)
    x_seed, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_seed = x_seed
    for _ in range(recurrence):
        out_seed = seed(out_seed)
    out = layer(x_ours)
    assert rel_error(out, out_seed) <= 1e-10
    assert rel_error(out, x) > 1e-3
    grad = torch.randn_like(out)
    out_seed.backward(grad)
    out.backward(grad)
    assert rel_error(x_ours.grad, x_seed.grad) <= 1e-10
    assert_same_parameter_gradients(seed, layer)  # key_conv.bias's gradient is zero up to rounding


def test_layer_under_torch_compile():
    layer = attnkern_nn.CrissCrossAttention(16, recurrence=2)
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    assert_compiles_like_eager(layer, torch.randn(2, 16, 6, 7))


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="in_dim must be >= 8"):
        attnkern_nn.CrissCrossAttention(4)
    with pytest.raises(ValueError, match="recurrence must be >= 1"):
        attnkern_nn.CrissCrossAttention(8, recurrence=0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        attnkern_nn.CrissCrossAttention(8)(torch.randn(8, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_types(dtype):
    q, k, v, attn = inputs((2, 3, 5, 6), 4, "cpu")
    assert rel_error(ops.criss_cross_affinity(q.to(dtype), k.to(dtype)), reference.criss_cross_affinity(q, k)) <= 1e-2
    assert rel_error(ops.criss_cross_aggregate(attn.to(dtype), v.to(dtype)),
                     reference.criss_cross_aggregate(attn, v)) <= 1e-2
    out = ops.criss_cross_attention(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype and rel_error(out, reference.criss_cross_attention(q, k, v)) <= 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_type_gradients_of_q_and_k_as_accurate_as_v(dtype):
    """D = Σ_p S_p·(g·v_p) from the products, not Σ_c g·out from the 16-bit output: with 64 channels of q and k
    (sharp weights, dS − D cancelling) the rounded output cost ∂q and ∂k 3.6× ∂v's error (which is the gradients'
    own rounding); now they match it. The reference takes the same rounded inputs."""
    q, k = (torch.randn(2, 64, 9, 11, dtype=torch.float64).to(dtype) for _ in range(2))
    v, g = (torch.randn(2, 16, 9, 11, dtype=torch.float64).to(dtype) for _ in range(2))
    out, lse = torch.ops.attnkern.criss_cross_attention(q, k, v)
    mine = torch.ops.attnkern.criss_cross_attention_backward(g, q, k, v, out, lse)
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    refs = torch.autograd.grad(reference.criss_cross_attention(*exact), exact, g.double())
    errors = [rel_error(m, r) for m, r in zip(mine, refs)]
    assert max(errors[:2]) <= 1.5 * errors[2], errors


def test_attention_backward_on_several_threads():
    """The CPU kernel's ATen calls run on OpenMP workers: they must keep the caller's autograd state."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        q, k, v = (torch.randn(2, 4, 9, 7, dtype=torch.float64, requires_grad=True) for _ in range(3))
        ops.criss_cross_attention(q, k, v).sum().backward()
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
    finally:
        torch.set_num_threads(threads)
