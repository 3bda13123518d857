"""window_attention: the fused shifted-window attention op against SwinIR's formulation."""

import pytest
import torch

from attnkern import ops, reference
from conftest import DEVICE_DTYPES, DEVICES, TOLERANCE, rel_error

# (B, H, W, heads, d, window, shift)
SHAPES = [
    (2, 16, 24, 3, 5, 8, 0),
    (2, 16, 24, 3, 5, 8, 4),
    (1, 14, 21, 2, 8, 7, 3),
    (3, 7, 7, 1, 4, 7, 0),
    (1, 12, 8, 2, 6, 4, 2),
    (1, 6, 9, 1, 3, 3, 1),
]


def seed_window_attention(qkv, bias, window, shift, mask=None, scale=None):
    """SwinIR's own steps, written independently of attnkern.reference: torch.roll, window partition by
    view/permute, the region mask of calculate_mask built by slicing, q·kᵀ·scale + bias + mask, softmax."""
    B, H, W, _, heads, d = qkv.shape
    scale = d ** -0.5 if scale is None else scale
    x = torch.roll(qkv, (-shift, -shift), (1, 2)) if shift else qkv
    x = x.reshape(B, H // window, window, W // window, window, 3 * heads * d).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(-1, window * window, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = x[0] * scale, x[1], x[2]
    attn = q @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    nW, N = (H // window) * (W // window), window * window
    if shift:
        img = torch.zeros(H, W)
        cnt = 0
        for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                img[hs, ws] = cnt
                cnt += 1
        mw = img.view(H // window, window, W // window, window).permute(0, 2, 1, 3).reshape(nW, N)
        region = (mw[:, None, :] - mw[:, :, None]).ne(0).to(attn.dtype).to(attn.device) * -100.0
        attn = (attn.view(B, nW, heads, N, N) + region[None, :, None]).view(-1, heads, N, N)
    if mask is not None:
        attn = (attn.view(B, nW, heads, N, N) + mask[None, :, None]).view(-1, heads, N, N)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, H // window, W // window, window, window, heads, d)
    out = out.permute(0, 1, 3, 2, 4, 5, 6).reshape(B, H, W, heads, d)
    return torch.roll(out, (shift, shift), (1, 2)) if shift else out


def make_inputs(shape, device, dtype, with_bias=True, with_mask=False, requires_grad=False):
    B, H, W, heads, d, window, _ = shape
    N, nW = window * window, (H // window) * (W // window)
    qkv = torch.randn(B, H, W, 3, heads, d, device=device, dtype=dtype)
    bias = torch.randn(heads, N, N, device=device, dtype=dtype) if with_bias else None
    mask = (torch.rand(nW, N, N, device=device) < 0.2).to(dtype) * -100.0 if with_mask else None
    if requires_grad:
        qkv.requires_grad_()
        if bias is not None:
            bias.requires_grad_()
    return qkv, bias, mask


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_reference_matches_swinir_steps(shape, with_mask):
    qkv, bias, mask = make_inputs(shape, "cpu", torch.float64, with_mask=with_mask)
    window, shift = shape[5], shape[6]
    out = reference.window_attention(qkv, bias, window, shift, mask)
    assert rel_error(out, seed_window_attention(qkv, bias, window, shift, mask)) <= 1e-12


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward(device, dtype, shape):
    qkv, bias, _ = make_inputs(shape, device, dtype)
    window, shift = shape[5], shape[6]
    out = ops.window_attention(qkv, bias, window, shift)
    assert out.shape == qkv.shape[:3] + qkv.shape[4:] and out.dtype == dtype
    expected = seed_window_attention(qkv.double(), bias.double(), window, shift)
    assert rel_error(out, expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_bias,with_mask", [(False, False), (False, True), (True, True)])
def test_forward_bias_and_mask_options(device, with_bias, with_mask):
    shape = (2, 16, 8, 2, 4, 8, 4)
    qkv, bias, mask = make_inputs(shape, device, torch.float64, with_bias, with_mask)
    out = ops.window_attention(qkv, bias, 8, 4, mask=mask, scale=0.3)
    assert rel_error(out, seed_window_attention(qkv, bias, 8, 4, mask, scale=0.3)) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_log_sum_exp(device):
    shape = (2, 8, 16, 3, 4, 4, 2)
    qkv, bias, _ = make_inputs(shape, device, torch.float64)
    out, lse = torch.ops.attnkern.window_attention(qkv, bias, None, 4, 2, 0.5)
    # The per-token log-sum-exp of the logits, from the reference's own partition: logits of token t of
    # window w are [heads, N]; put them back in image layout like the output.
    x = torch.roll(qkv, (-2, -2), (1, 2))
    q, k, _ = reference.window_partition(x, 4).permute(2, 0, 3, 1, 4).unbind(0)
    logits = 0.5 * q @ k.transpose(-2, -1) + bias
    region = reference.shift_region_mask(8, 16, 4, 2, device, torch.float64)
    logits = (logits.view(2, -1, 3, 16, 16) + region[None, :, None]).view(-1, 3, 16, 16)
    expected = reference.window_reverse(logits.logsumexp(-1).transpose(1, 2), 4, 8, 16)
    expected = torch.roll(expected, (2, 2), (1, 2))
    assert lse.shape == (2, 8, 16, 3) and rel_error(lse, expected) <= 1e-12
    assert rel_error(out, ops.window_attention(qkv, bias, 4, 2, scale=0.5)) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_qkv(device):
    base = torch.randn(2, 3, 8, 16, 3, 2, 4, device=device, dtype=torch.float64)
    qkv = base.permute(1, 2, 3, 4, 0, 5, 6).reshape(3, 8, 16, 3, 4, 4)[:, :, :, :, ::2]  # strided heads
    assert not qkv.is_contiguous()
    bias = torch.randn(2, 16, 16, device=device, dtype=torch.float64)
    out = ops.window_attention(qkv, bias, 4, 2)
    assert rel_error(out, seed_window_attention(qkv.contiguous(), bias, 4, 2)) <= 1e-12


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[4]])
@pytest.mark.parametrize("with_mask", [False, True])
def test_backward(device, dtype, shape, with_mask):
    qkv, bias, mask = make_inputs(shape, device, dtype, with_mask=with_mask, requires_grad=True)
    window, shift = shape[5], shape[6]
    out = ops.window_attention(qkv, bias, window, shift, mask=mask)
    grad = torch.randn_like(out)
    grad_qkv, grad_bias = torch.autograd.grad(out, (qkv, bias), grad)
    qkv64, bias64 = qkv.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
    mask64 = mask.double() if mask is not None else None
    expected = torch.autograd.grad(seed_window_attention(qkv64, bias64, window, shift, mask64), (qkv64, bias64),
                                   grad.double())
    assert rel_error(grad_qkv, expected[0]) <= TOLERANCE[dtype]
    assert rel_error(grad_bias, expected[1]) <= TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_backward_without_bias(device):
    qkv, _, _ = make_inputs((2, 8, 8, 2, 3, 4, 2), device, torch.float64, with_bias=False, requires_grad=True)
    out = ops.window_attention(qkv, None, 4, 2)
    (grad_qkv,) = torch.autograd.grad(out.square().sum(), qkv)
    qkv_ref = qkv.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(seed_window_attention(qkv_ref, None, 4, 2).square().sum(), qkv_ref)
    assert rel_error(grad_qkv, expected) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_bias_gradient_is_deterministic(device):
    qkv, bias, _ = make_inputs((4, 16, 16, 2, 4, 4, 2), device, torch.float32, requires_grad=True)
    grad = torch.randn(4, 16, 16, 2, 4, device=device)
    first = torch.autograd.grad(ops.window_attention(qkv, bias, 4, 2), (qkv, bias), grad)
    second = torch.autograd.grad(ops.window_attention(qkv, bias, 4, 2), (qkv, bias), grad)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    qkv, bias, mask = make_inputs((1, 4, 8, 2, 3, 4, 2), device, torch.float64, with_mask=True, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, b: ops.window_attention(q, b, 4, 2, mask=mask), (qkv, bias))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_bias,with_mask,shift", [(True, False, 2), (False, True, 0), (True, True, 2)])
def test_opcheck(device, with_bias, with_mask, shift):
    qkv, bias, mask = make_inputs((2, 8, 4, 2, 3, 4, shift), device, torch.float32, with_bias, with_mask,
                                  requires_grad=True)
    torch.library.opcheck(torch.ops.attnkern.window_attention.default, (qkv, bias, mask, 4, shift, 0.5))


def test_under_torch_compile():
    qkv, bias, _ = make_inputs((2, 8, 8, 2, 4, 4, 2), "cpu", torch.float32, requires_grad=True)

    def branch(qkv, bias):
        return ops.window_attention(qkv, bias, 4, 2).square().sum()

    compiled = torch.compile(branch, fullgraph=True)
    grads = torch.autograd.grad(compiled(qkv, bias), (qkv, bias))
    expected = torch.autograd.grad(branch(qkv, bias), (qkv, bias))
    for got, want in zip(grads, expected):
        assert rel_error(got, want) <= 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    qkv, bias, _ = make_inputs((0, 8, 8, 2, 4, 4, 2), device, torch.float32, requires_grad=True)
    out = ops.window_attention(qkv, bias, 4, 2)
    assert out.shape == (0, 8, 8, 2, 4)
    grad_qkv, grad_bias = torch.autograd.grad(out.sum(), (qkv, bias))
    assert grad_qkv.shape == qkv.shape and torch.equal(grad_bias, torch.zeros_like(bias))


@pytest.mark.parametrize("H,W", [(0, 8), (8, 0)])
def test_image_without_windows(H, W):
    """An image without windows: an empty output; the bias gets a zero gradient, as the reference's
    (whose window partition and reverse used to fail on an ambiguous reshape(-1, ...))."""
    qkv, bias, mask = make_inputs((2, H, W, 2, 3, 4, 2), "cpu", torch.float64, with_mask=True, requires_grad=True)
    out = ops.window_attention(qkv, bias, 4, 2, mask)
    expected = reference.window_attention(qkv, bias, 4, 2, mask)
    assert out.shape == expected.shape == (2, H, W, 2, 3)
    grads = torch.autograd.grad(out.sum(), (qkv, bias))
    assert grads[0].shape == qkv.shape and torch.equal(grads[1], torch.zeros_like(bias))
    assert torch.equal(reference.window_reverse(reference.window_partition(qkv, 4), 4, H, W, batch=2), qkv)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_types(dtype):
    qkv, bias, _ = make_inputs(SHAPES[1], "cpu", dtype, requires_grad=True)
    out = ops.window_attention(qkv, bias, 8, 4)
    assert out.dtype == dtype
    assert rel_error(out, seed_window_attention(qkv.double(), bias.double(), 8, 4)) <= TOLERANCE[dtype]
    grad_qkv, grad_bias = torch.autograd.grad(out.float().sum(), (qkv, bias))
    assert grad_qkv.dtype == dtype and grad_bias.dtype == dtype


_qkv = torch.randn(1, 8, 8, 3, 2, 4)
_bias = torch.randn(2, 16, 16)


@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((torch.randn(1, 8, 8, 3, 8), None, 4), {}, ValueError, r"qkv: expected a 6-D tensor \[B, H, W, 3, heads, d\]"),
    ((torch.randn(1, 8, 8, 2, 2, 4), None, 4), {}, ValueError, r"qkv must hold q, k and v in dim 3"),
    ((torch.randn(1, 8, 6, 3, 2, 4), None, 4), {}, ValueError, "multiples of window_size 4, got H = 8, W = 6"),
    ((_qkv, None, 0), {}, ValueError, "window_size must be >= 1, got 0"),
    ((_qkv, None, True), {}, TypeError, "window_size must be an int, got bool"),
    ((_qkv, None, 4, 4), {}, ValueError, r"shift_size must be in \[0, window_size\) = \[0, 4\), got 4"),
    ((_qkv, None, 4, -1), {}, ValueError, "shift_size"),
    ((_qkv, torch.randn(2, 16, 15), 4), {}, ValueError, r"bias: expected shape \[heads, N, N\] = \[2, 16, 16\], got \[2, 16, 15\]"),
    ((_qkv, torch.randn(3, 16, 16), 4), {}, ValueError, "bias: expected shape"),
    ((_qkv, _bias.double(), 4), {}, TypeError, "bias and qkv must have the same dtype"),
    ((_qkv, _bias, 4), {"mask": torch.zeros(3, 16, 16)}, ValueError, r"mask: expected shape \[nW, N, N\] = \[4, 16, 16\]"),
    ((_qkv, _bias, 4), {"scale": "a"}, TypeError, "scale must be a real number, got str"),
    ((_qkv.long(), None, 4), {}, TypeError, "qkv: expected a floating-point tensor, got Long"),
    (([1.0], None, 4), {}, TypeError, "qkv must be a torch.Tensor"),
])
def test_bad_inputs(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ops.window_attention(*args, **kwargs)


@pytest.mark.parametrize("args,match", [
    ((torch.randn(1, 8, 8, 3, 2), None, None, 4, 0, 1.0), r"6-D tensor \[B, H, W, 3, heads, d\]"),
    ((torch.randn(1, 8, 6, 3, 2, 4), None, None, 4, 0, 1.0), "H and W must be multiples of window_size 4"),
    ((_qkv, None, None, 4, 5, 1.0), r"shift_size must be in \[0, window_size\)"),
    ((_qkv, torch.randn(2, 16, 8), None, 4, 0, 1.0), "bias: expected shape"),
    ((_qkv, None, torch.randn(2, 16, 16), 4, 0, 1.0), "mask: expected shape"),
    ((torch.randn(1, 8, 8, 3, 0, 4), None, None, 4, 0, 1.0), r"at least one head \(heads >= 1\)"),
])
def test_kernel_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.attnkern.window_attention(*args)


def test_backward_kernel_checks_saved_tensors():
    out, lse = torch.ops.attnkern.window_attention(_qkv, _bias, None, 4, 0, 0.5)
    with pytest.raises(ValueError, match="lse: expected shape"):
        torch.ops.attnkern.window_attention_backward(out, _qkv, _bias, None, out, lse[..., :1], 4, 0, 0.5)
    with pytest.raises(TypeError, match="lse must be Float"):
        torch.ops.attnkern.window_attention_backward(out, _qkv, _bias, None, out, lse.double(), 4, 0, 0.5)
