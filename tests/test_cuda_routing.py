"""Routing on CUDA (attnkern.ops._cuda_routing) and the plain formulations it routes to (attnkern.ops._plain).

On this CPU-only machine: the decision function with device type strings and both settings, the
environment variable (in a subprocess), the CPU ops untouched by the setting, each op's routed branch
run on CPU tensors (routing forced), and the plain formulations against the references and the CPU
kernels in float64, forward and gradients. On a GPU also: the routed ops on CUDA tensors (setting
"auto") against the float64 reference.
"""

import os
import subprocess
import sys

import pytest
import torch

import attnkern
from attnkern import ops, reference
from attnkern.ops import _cuda_routing as routing
from attnkern.ops import _plain
from conftest import CUDA, TOLERANCE, rel_error, requires_cuda

ROUTED = ["criss_cross_affinity", "criss_cross_aggregate", "window_attention", "dynamic_region_conv",
          "sqrtm_newton_schulz"]
KEPT = ["covpool", "triuvec", "criss_cross_attention", "channel_pool", "spatial_pool",
        "apply_gates", "region_assign", "group_enhance"]
BENCHMARK_ONLY = ["criss_cross_attention"]  # kept ops whose plain formulation stays as the benchmark's row
SETTINGS = ["auto", "always"]


# ---- the decision ---------------------------------------------------------------------------------


def test_table_covers_every_op():
    functional = {name for name in ops.__all__ if name[0].islower() and not name.startswith("cuda_kernels")}
    assert set(routing.ROUTES) == functional == set(ROUTED) | set(KEPT)
    for op, route in routing.ROUTES.items():
        assert route.model, op  # the model's figures behind every entry
        assert route.formulation or not route.plain, op
        bounds = (route.size_at_least, route.size_below, route.kernel_size_max)
        assert bool(route.size) == any(b is not None for b in bounds), op
        assert bool(route.kernel_dtypes) == (route.kernel_size_max is not None), op
        assert route.plain == (op in ROUTED), op
        assert hasattr(_plain, op) == (route.plain or op in BENCHMARK_ONLY), op


@pytest.mark.parametrize("op", ROUTED + KEPT)
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("size", [None, 1, 2**40])
def test_cpu_and_meta_never_route(op, setting, grad, size):
    for device_type in ("cpu", "meta"):
        assert not routing.routes_to_plain(op, device_type, grad=grad, size=size, setting=setting)


@pytest.mark.parametrize("op", ROUTED + KEPT)
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("size", [None, 1, 2**40])
def test_always_runs_the_kernels(op, grad, size):
    assert not routing.routes_to_plain(op, "cuda", grad=grad, size=size, setting="always")


# (op, grad, size) → plain under "auto" on CUDA
AUTO = [
    ("covpool", False, None, False), ("covpool", True, None, False),
    ("sqrtm_newton_schulz", False, None, False), ("sqrtm_newton_schulz", True, 1024, False),  # (float32)
    ("triuvec", True, None, False), ("channel_pool", True, 100, False),
    ("criss_cross_attention", False, None, False), ("criss_cross_attention", True, None, False),
    ("criss_cross_aggregate", False, None, True),
    ("criss_cross_affinity", True, None, False), ("criss_cross_affinity", True, 2**26 - 1, False),
    ("criss_cross_affinity", False, 2**26, True), ("criss_cross_affinity", True, 2 * 64 * 97 * 97 * 193, True),
    ("criss_cross_affinity", True, 8 * 128 * 20 * 20 * 39, False),
    ("window_attention", False, None, True), ("window_attention", True, None, True),
    ("window_attention", True, 64, True), ("window_attention", False, 65, True),  # (float32, the default)
    ("dynamic_region_conv", False, None, False), ("dynamic_region_conv", True, None, True),
    ("region_assign", False, None, False), ("region_assign", True, None, False),
    ("spatial_pool", False, 8 * 20 * 20, False), ("spatial_pool", True, 8 * 20 * 20, False),
    ("apply_gates", True, 8 * 20 * 20, False), ("apply_gates", True, None, False),
]


@pytest.mark.parametrize("op,grad,size,plain", AUTO)
def test_auto_follows_the_table(op, grad, size, plain):
    assert routing.routes_to_plain(op, "cuda", grad=grad, size=size, setting="auto") is plain
    route = routing.ROUTES[op]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # the dtypes without an exception of their own
        if (dtype not in route.plain_dtypes + route.dtypes
                and (op != "window_attention" or size is None or size > 64)):
            assert routing.routes_to_plain(op, "cuda", grad=grad, size=size, setting="auto", dtype=dtype) is plain


@pytest.mark.parametrize("dtype,grad,size,plain", [
    (torch.float16, False, 64, False), (torch.bfloat16, False, 49, False),  # the tensor-core kernels
    (torch.bfloat16, True, 49, False), (torch.float16, True, 16, False),
    (torch.float16, False, 81, True), (torch.bfloat16, True, 65, True), (torch.float32, False, 49, True),
    (torch.float32, True, 49, True), (torch.float64, False, 16, True), (torch.bfloat16, False, None, True)])
def test_window_attention_keeps_the_tensor_core_kernels_in_half_precision(dtype, grad, size, plain):
    assert routing.routes_to_plain("window_attention", "cuda", grad=grad, size=size, setting="auto",
                                   dtype=dtype) is plain


@pytest.mark.parametrize("dtype,grad,plain", [
    (torch.float32, False, False), (torch.float64, False, False), (None, False, False),  # inference: the kernel
    (torch.float32, True, True), (torch.float64, True, True),  # training: the plain path
    (torch.float16, False, True), (torch.bfloat16, False, True), (torch.bfloat16, True, True)])  # half: plain
def test_dynamic_region_conv_routes_training_and_half_precision(dtype, grad, plain):
    assert routing.routes_to_plain("dynamic_region_conv", "cuda", grad=grad, setting="auto", dtype=dtype) is plain
    assert not routing.routes_to_plain("dynamic_region_conv", "cuda", grad=grad, setting="always", dtype=dtype)


@pytest.mark.parametrize("dtype,grad,size,plain", [
    (torch.float16, False, 65, True), (torch.bfloat16, True, 1024, True),  # half past one block: the plain bmm
    (torch.bfloat16, False, 64, False), (torch.float16, True, 16, False),  # one block: the kernel
    (torch.float32, False, 1024, False), (torch.float64, True, 256, False), (None, False, 1024, False),
    (torch.bfloat16, False, None, False)])
def test_sqrtm_routes_half_precision_past_one_block(dtype, grad, size, plain):
    assert routing.routes_to_plain("sqrtm_newton_schulz", "cuda", grad=grad, size=size, setting="auto",
                                   dtype=dtype) is plain
    assert not routing.routes_to_plain("sqrtm_newton_schulz", "cuda", grad=grad, size=size, setting="always",
                                       dtype=dtype)


def test_setting_blocks_nest_and_are_checked():
    outer = routing.cuda_kernels_setting()
    with ops.cuda_kernels("auto"):
        assert ops.cuda_kernels_setting() == "auto" and routing.routes_to_plain("criss_cross_aggregate", "cuda")
        with ops.cuda_kernels("always"):
            assert ops.cuda_kernels_setting() == "always" and not routing.routes_to_plain("criss_cross_aggregate", "cuda")
        assert ops.cuda_kernels_setting() == "auto"
    assert routing.cuda_kernels_setting() == outer
    for bad in ("never", "AUTO", 1, None):
        with pytest.raises(ValueError, match="setting must be one of"):
            with ops.cuda_kernels(bad):
                pass
    with pytest.raises(ValueError, match="setting must be one of"):
        routing.routes_to_plain("criss_cross_aggregate", "cuda", setting="kernels")
    assert routing.cuda_kernels_setting() == outer


@pytest.mark.parametrize("value,expected,warns", [(None, "auto", False), ("auto", "auto", False),
                                                  ("always", "always", False), (" Always ", "always", False),
                                                  ("sometimes", "auto", True)])
def test_environment_variable(value, expected, warns):
    env = {k: v for k, v in os.environ.items() if k != routing.ENV_VAR}
    if value is not None:
        env[routing.ENV_VAR] = value
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import attnkern\n"
            "from attnkern.ops import _cuda_routing as r\n"
            "print(r.cuda_kernels_setting(), r.routes_to_plain('window_attention', 'cuda'),"
            " r.routes_to_plain('window_attention', 'cpu'))\n"
            "with attnkern.ops.cuda_kernels('auto'):\n"
            "    print(r.routes_to_plain('window_attention', 'cuda'))\n")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [expected, str(expected == "auto"), "False", "True"]
    assert ("ATTNKERN_CUDA_KERNELS" in run.stderr) is warns


# ---- inputs of every routed op ----------------------------------------------------------------------


def _inputs(op, device="cpu", dtype=torch.float64):
    """(args, kwargs) with floating tensors requiring grad, small odd shapes."""
    def r(*shape):
        return torch.randn(*shape, dtype=dtype, device=device)

    if op == "covpool":
        return (r(2, 5, 3, 4),), {}
    if op == "sqrtm_newton_schulz":
        x = r(2, 5, 9)
        return (x @ x.transpose(1, 2) / 9 + 0.1 * torch.eye(5, dtype=dtype, device=device),), {"iters": 4}
    if op in ("criss_cross_attention",):
        return (r(2, 4, 5, 7), r(2, 4, 5, 7), r(2, 3, 5, 7)), {}
    if op == "criss_cross_affinity":
        return (r(2, 4, 5, 7), r(2, 4, 5, 7)), {}
    if op == "criss_cross_aggregate":
        return (r(2, 11, 5, 7).softmax(1), r(2, 3, 5, 7)), {}
    if op == "window_attention":
        return (r(2, 8, 12, 3, 2, 5), r(2, 16, 16), 4), {"shift_size": 2, "mask": r(6, 16, 16)}
    if op == "dynamic_region_conv":
        return (r(2, 3, 7, 6), r(2, 3, 4, 3, 3, 3), r(2, 3, 4, 4)), {"stride": (2, 1), "padding": 1, "dilation": (1, 2)}
    if op == "region_assign":
        return (r(2, 3, 4, 5, 6), r(2, 3, 5, 6)), {}
    if op == "spatial_pool":
        return (r(2, 5, 4, 3), r(2, 5)), {}
    if op == "apply_gates":
        return (r(2, 5, 4, 3), r(2, 5), r(2, 1, 4, 3)), {}
    if op == "group_enhance":
        return (r(2, 6, 4, 3), r(3), r(3), 3), {}
    raise KeyError(op)


def _leaves(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]


def _value_and_grads(fn, args, kwargs):
    args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    kwargs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}  # mask: no grad
    out = fn(*args, **kwargs)
    weight = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)).to(out)
    grads = torch.autograd.grad((out * weight).sum(), _leaves(args))
    return out, grads


def _reference(op):
    return getattr(reference, op)


# ---- CPU: the setting changes nothing; the routed branches are wired right ---------------------------


def _forbid_plain(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a plain formulation ran on the CPU")
    for op in ROUTED:
        monkeypatch.setattr(_plain, op, forbidden)


@pytest.mark.parametrize("op", ROUTED + KEPT)
def test_cpu_ops_ignore_the_setting(op, monkeypatch):
    if op == "triuvec":
        args, kwargs = (torch.randn(2, 4, 4, dtype=torch.float64),), {}
    elif op == "channel_pool":
        args, kwargs = (torch.randn(2, 3, 4, 5, dtype=torch.float64),), {}
    else:
        args, kwargs = _inputs(op)
    fn = getattr(ops, op)
    results = []
    for setting in SETTINGS:
        with ops.cuda_kernels(setting):
            _forbid_plain(monkeypatch)
            out = fn(*args, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            results.append(out)
        monkeypatch.undo()
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("op", ROUTED)
def test_routed_branch_on_cpu_tensors(op, monkeypatch):
    """Each op's routed branch (forced on CPU tensors) runs its check, then the plain formulation with
    the op's arguments: same values and gradients as the op's CPU kernel."""
    args, kwargs = _inputs(op)
    fn = getattr(ops, op)
    kernel_out, kernel_grads = _value_and_grads(fn, args, kwargs)
    module = sys.modules[fn.__module__]
    calls = []
    plain_fn = getattr(_plain, op)

    def spy(*a, **k):
        calls.append(op)
        return plain_fn(*a, **k)

    monkeypatch.setattr(module, "plain_on_cuda", lambda name, *tensors, size=None: name == op)
    monkeypatch.setattr(_plain, op, spy)
    plain_out, plain_grads = _value_and_grads(fn, args, kwargs)
    assert calls == [op]
    assert rel_error(plain_out, kernel_out) <= 1e-10
    for g_plain, g_kernel in zip(plain_grads, kernel_grads):
        assert rel_error(g_plain, g_kernel) <= 1e-10


BAD = {  # op → arguments its check op rejects (ValueError) though the wrapper lets them through
    "window_attention": lambda: (torch.randn(2, 8, 10, 3, 2, 5), None, 4),  # W not a multiple of the window
}


@pytest.mark.parametrize("op", sorted(BAD))
def test_routed_branch_keeps_the_checks(op, monkeypatch):
    module = sys.modules[getattr(ops, op).__module__]
    monkeypatch.setattr(module, "plain_on_cuda", lambda name, *tensors, size=None: True)
    _forbid_plain(monkeypatch)
    with pytest.raises(ValueError):
        getattr(ops, op)(*BAD[op]())


# ---- the plain formulations against the references (float64, values and gradients) -----------------


def _assert_like_reference(op, args, kwargs, tolerance=1e-10):
    out, grads = _value_and_grads(getattr(_plain, op), args, kwargs)
    ref_out, ref_grads = _value_and_grads(_reference(op), args, kwargs)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    assert rel_error(out, ref_out) <= tolerance
    for g, g_ref in zip(grads, ref_grads):
        assert g.shape == g_ref.shape and rel_error(g, g_ref) <= tolerance


@pytest.mark.parametrize("op", ROUTED)
def test_plain_matches_reference(op):
    args, kwargs = _inputs(op)
    _assert_like_reference(op, args, kwargs)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("scale", [None, 0.7, -0.3])
def test_plain_window_attention_variants(with_bias, shift, with_mask, scale):
    B, H, W, heads, d, ws = 2, 8, 12, 3, 4, 4
    qkv = torch.randn(B, H, W, 3, heads, d, dtype=torch.float64)
    bias = torch.randn(heads, ws * ws, ws * ws, dtype=torch.float64) if with_bias else None
    mask = torch.randn(6, ws * ws, ws * ws, dtype=torch.float64) if with_mask else None
    args, kwargs = (qkv, bias, ws, shift), {"mask": mask, "scale": scale}  # the mask: no gradient
    _assert_like_reference("window_attention", args, kwargs)
    # and the op's CPU kernel
    plain, plain_grads = _value_and_grads(_plain.window_attention, args, kwargs)
    kernel, kernel_grads = _value_and_grads(ops.window_attention, args, kwargs)
    assert rel_error(plain, kernel) <= 1e-10
    for g, g_kernel in zip(plain_grads, kernel_grads):
        assert rel_error(g, g_kernel) <= 1e-10


@pytest.mark.parametrize("shape", [(2, 4, 5, 7), (1, 3, 1, 6), (1, 3, 6, 1), (1, 2, 1, 1), (2, 3, 2, 2)])
def test_plain_criss_cross_shapes_and_self_position(shape):
    """The pixel itself is one of its H + W − 1 positions, once (in its row): energies laid out as the op
    (row first, then the column without the pixel), and the attention equal to the op's."""
    B, C, H, W = shape
    q, k, v = (torch.randn(B, C, H, W, dtype=torch.float64) for _ in range(3))
    attn = torch.randn(B, H + W - 1, H, W, dtype=torch.float64).softmax(1)
    _assert_like_reference("criss_cross_affinity", (q, k), {})
    _assert_like_reference("criss_cross_aggregate", (attn, v), {})
    _assert_like_reference("criss_cross_attention", (q, k, v), {})
    energy = _plain.criss_cross_affinity(q, k)
    self_energy = (q * k).sum(1)  # the pixel with itself: at p = w (its row), nowhere in its column
    w = torch.arange(W).view(1, 1, 1, W).expand(B, 1, H, W)
    torch.testing.assert_close(energy.gather(1, w).squeeze(1), self_energy)
    out = _plain.criss_cross_attention(q, k, v)
    assert rel_error(out, ops.criss_cross_attention(q, k, v)) <= 1e-12
    assert rel_error(out, ops.criss_cross_aggregate(ops.criss_cross_affinity(q, k).softmax(1), v)) <= 1e-12


@pytest.mark.parametrize("geometry", [dict(), dict(padding=1), dict(stride=2, padding=(1, 0), dilation=(2, 1))])
def test_plain_dynamic_region_conv(geometry):
    """Every region's grouped conv2d and the gather: the op's CPU kernel's values and gradients."""
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    filters = torch.randn(2, 4, 5, 3, 3, 3, dtype=torch.float64)
    out_size = reference.region_correlation(x, filters, **geometry).shape[-2:]
    guide = torch.randn(2, 4, *out_size, dtype=torch.float64)
    plain, plain_grads = _value_and_grads(_plain.dynamic_region_conv, (x, filters, guide), geometry)
    kernel, kernel_grads = _value_and_grads(ops.dynamic_region_conv, (x, filters, guide), geometry)
    assert rel_error(plain, kernel) <= 1e-10
    for g, g_kernel in zip(plain_grads, kernel_grads):
        assert rel_error(g, g_kernel) <= 1e-10


@pytest.mark.parametrize("op", ["criss_cross_attention", "criss_cross_affinity", "criss_cross_aggregate",
                                "window_attention"])
def test_plain_gradcheck(op):
    args, kwargs = _inputs(op)
    tensors = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    assert torch.autograd.gradcheck(lambda *t: getattr(_plain, op)(*t, **kwargs), tuple(tensors))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["criss_cross_attention", "criss_cross_affinity", "criss_cross_aggregate",
                                "window_attention", "dynamic_region_conv"])
def test_plain_lower_precision(op, dtype):
    """In float32 and bfloat16 (on the CPU here) the plain formulations keep the ops' tolerances."""
    args, kwargs = _inputs(op)
    low = [a.to(dtype) if isinstance(a, torch.Tensor) else a for a in args]
    exact = [a.to(dtype).double() if isinstance(a, torch.Tensor) else a for a in args]  # the same rounded inputs
    kwargs_low = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    out = getattr(_plain, op)(*low, **kwargs_low)
    assert out.dtype == dtype
    assert rel_error(out, _reference(op)(*exact, **kwargs)) <= TOLERANCE[dtype]


def _covariances(batch, n, dtype=torch.float64, device="cpu"):
    """Fresh sample covariances [batch, n, n] of n + 20 positions (symmetric positive definite)."""
    x = torch.randn(batch, n, n + 20, dtype=torch.float64)
    return (x @ x.transpose(1, 2) / (n + 20)).to(device, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_plain_sqrtm_in_half_precision_past_one_block(dtype):
    """What fp16/bf16 matrices past 64×64 run on CUDA: the Newton–Schulz loop in their dtype, iterates
    rounded between steps, keeps the half types' tolerance (on the CPU here) in values and gradients."""
    a = _covariances(2, 80, dtype)
    out, (grad,) = _value_and_grads(_plain.sqrtm_newton_schulz, (a, 5), {})
    ref_out, (ref_grad,) = _value_and_grads(reference.sqrtm_newton_schulz, (a.double(), 5), {})
    assert out.dtype == grad.dtype == dtype
    assert rel_error(out, ref_out) <= TOLERANCE[dtype]
    assert rel_error(grad, ref_grad) <= TOLERANCE[dtype]


def test_empty_inputs_take_the_reference():
    q = torch.randn(0, 3, 4, 5)
    assert _plain.criss_cross_attention(q, q, q).shape == q.shape
    assert _plain.criss_cross_affinity(q, q).shape == (0, 8, 4, 5)
    qkv = torch.randn(0, 4, 4, 3, 2, 3)
    assert _plain.window_attention(qkv, None, 2, 1).shape == (0, 4, 4, 2, 3)


# ---- CUDA: the routed path (setting "auto"), where a GPU is present --------------------------------


CUDA_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@requires_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("op", ROUTED)
def test_cuda_routed_path(op, dtype, monkeypatch):
    """On CUDA, with a gradient needed (so that every routed op routes; the size-limited ones at sizes
    where they route; sqrtm in fp16/bf16 only), the op runs its plain formulation and matches the float64
    reference."""
    args, kwargs = _inputs(op)
    if op == "criss_cross_affinity":  # above the work threshold: 64·96·96·191 ≈ 113M ≥ 2^26
        args = (torch.randn(1, 64, 96, 96, dtype=torch.float64), torch.randn(1, 64, 96, 96, dtype=torch.float64))
    if op == "window_attention" and dtype in (torch.float16, torch.bfloat16):  # past the tensor-core kernels' 64 tokens
        r = lambda *shape: torch.randn(*shape, dtype=torch.float64)  # noqa: E731
        args, kwargs = (r(1, 9, 18, 3, 2, 5), r(2, 81, 81), 9), {"shift_size": 4, "mask": r(2, 81, 81)}
    if op == "sqrtm_newton_schulz":  # past one block (64×64), where fp16/bf16 route
        args, kwargs = (_covariances(2, 80),), {"iters": 5}
    routed = op != "sqrtm_newton_schulz" or dtype in (torch.float16, torch.bfloat16)
    exact_args = [a.to(dtype).double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    exact_kwargs = {k: v.to(dtype).double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    cuda_args = [a.to("cuda", dtype) if isinstance(a, torch.Tensor) else a for a in exact_args]
    cuda_kwargs = {k: v.to("cuda", dtype) if isinstance(v, torch.Tensor) else v for k, v in exact_kwargs.items()}
    calls = []
    plain_fn = getattr(_plain, op)
    monkeypatch.setattr(_plain, op, lambda *a, **k: calls.append(op) or plain_fn(*a, **k))
    with ops.cuda_kernels("auto"):
        out, grads = _value_and_grads(getattr(ops, op), cuda_args, cuda_kwargs)
    assert calls == ([op] if routed else [])  # float32/float64 sqrtm keeps the kernel
    ref_out, ref_grads = _value_and_grads(getattr(ops, op), exact_args, exact_kwargs)  # CPU kernels, float64
    tolerance = 2 * TOLERANCE[dtype] if dtype in (torch.float16, torch.bfloat16) else TOLERANCE[dtype] * 10
    assert out.dtype == dtype and rel_error(out.cpu(), ref_out) <= tolerance
    for g, g_ref in zip(grads, ref_grads):
        assert rel_error(g.cpu(), g_ref) <= tolerance


@requires_cuda
@pytest.mark.parametrize("op", ["criss_cross_affinity", "dynamic_region_conv"])
def test_cuda_kept_kernels_where_the_table_says(op, monkeypatch):
    """Small work (affinity) and float64 inference (DRConv) keep the kernel under "auto"."""
    args, kwargs = _inputs(op)
    monkeypatch.setattr(_plain, op, lambda *a, **k: pytest.fail("routed"))
    cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    with ops.cuda_kernels("auto"), torch.no_grad():
        getattr(ops, op)(*cuda_args, **kwargs)
