"""The cases of every CUDA kernel of attnkern: inputs, the pure-PyTorch references (float64, on the same
rounded inputs), the CPU kernels, and how to compare — shared by tests/test_cuda_emulated.py (the kernels on
the emulated device) and scripts/kernel_sweep.py (the same cases on a GPU, e.g. under compute-sanitizer).

A case function takes a Backend (where the CUDA kernels run), a dtype, an Inputs (random numbers of its own),
and the shape; it runs the op's forward and backward kernels and returns Outputs to check(). Inputs and
results live on the CPU: Backend.op moves them to the device and back.
"""

import glob
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from attnkern import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
HALF = (torch.float16, torch.bfloat16)
# Relative error bounds against a float64 reference (DESIGN.md, "Tests"; as tests/conftest.py).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
K = torch.ops.attnkern  # the CPU kernels (on CPU tensors)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


class _DeviceOps:
    """torch.ops namespace `ops` on `device`: tensor arguments go there, tensor results come back to the CPU."""

    def __init__(self, ops, device):
        self._ops, self._device = ops, device

    def __getattr__(self, name):
        op = getattr(self._ops, name)

        def call(*args):
            moved = [a.to(self._device) if isinstance(a, torch.Tensor) else a for a in args]
            result = op(*moved)
            if isinstance(result, (tuple, list)):
                return tuple(r.cpu() for r in result)
            return result.cpu()

        return call


class Backend:
    """Where the CUDA kernels run: the emulated device (torch.ops.attnkern_emulated on CPU tensors) or a GPU
    (torch.ops.attnkern on CUDA tensors)."""

    def __init__(self, ops, device: str, name: str):
        self.op = _DeviceOps(ops, device)
        self.device = device
        self.name = name

    @staticmethod
    def cpu(op, *args):
        """The CPU kernel's result, or None where it does not take this dtype."""
        try:
            return op(*args)
        except RuntimeError as e:
            if "not implemented for" in str(e):
                return None
            raise


# ---- comparing -----------------------------------------------------------------------------------------


@dataclass
class Output:
    name: str
    got: torch.Tensor  # from the emulated CUDA kernel
    expected: torch.Tensor  # the reference, float64
    cpu: Optional[torch.Tensor] = None  # from the CPU kernel, when it runs this dtype
    exact: bool = False  # a copy, not a computation: must match bit for bit


def check(outputs: List[Output], dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    for o in outputs:
        assert o.got.shape == o.expected.shape, \
            f"{o.name}: shape {tuple(o.got.shape)}, expected {tuple(o.expected.shape)}"
        nan = o.got.isnan()
        assert torch.equal(nan, o.expected.isnan()), f"{o.name}: NaN at {nan.sum()} elements, the reference at " \
                                                     f"{o.expected.isnan().sum()} (an unwritten output is NaN)"
        got, expected = o.got.double().masked_fill(nan, 0), o.expected.double().masked_fill(nan, 0)
        if o.exact:
            assert torch.equal(got, expected), o.name
        else:
            assert rel_error(got, expected) <= tol, f"{o.name}: relative error {rel_error(got, expected):.3g} > {tol}"
        if o.cpu is not None:  # the two kernels agree, to within twice the tolerance of the reference's size
            cpu = o.cpu.double().masked_fill(o.cpu.isnan(), 0)
            assert torch.equal(o.cpu.isnan(), nan), f"{o.name}: NaN where the CPU kernel has none (or vice versa)"
            scale = expected.norm().item()
            if scale > 0:  # (an exact zero is checked above; rounding noise around it has no relative size)
                difference = (got - cpu).norm().item() / scale
                assert difference <= 2 * tol, f"{o.name}: relative difference from the CPU kernel {difference:.3g}"


def first(result):
    return None if result is None else result[0]


def item(result, i):
    return None if result is None else result[i]


def grads(fn, inputs, grad_outputs):
    """Gradients of fn (float64, autograd) at inputs (some None) for the given output gradients."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    pairs = [(o, g.double()) for o, g in zip(outs, grad_outputs) if g is not None]
    wrt = [t for t in leaves if t is not None]
    result = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True))
    return [None if t is None else next(result) for t in leaves]


def gradient_outputs(op, names, inputs, got, expected, cpu):
    """The Outputs of a backward kernel's gradients `got` (one per input, in order) against the reference's
    `expected` and the CPU kernel's `cpu` (None where it does not run); an input that is None (an absent
    optional one) must get an empty gradient instead."""
    outputs = []
    for i, (name, value) in enumerate(zip(names, inputs)):
        if value is None:
            assert got[i].numel() == 0, f"{op} {name}: a gradient for an absent input"
        else:
            outputs.append(Output(f"{op} {name}", got[i], expected[i], item(cpu, i)))
    return outputs


def f64(t):
    return None if t is None else t.double()


class Inputs:
    """Random inputs of one case, drawn from its own generator: a seed gives the same inputs every time
    (the tests draw it from ATTNKERN_TEST_SEED, so every run has fresh inputs and any run can be repeated)."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed % 2**63)

    def randn(self, *shape, dtype, offset=0.0, scale=1.0):
        t = torch.randn(*shape, dtype=torch.float64, generator=self.gen) * scale + offset
        return t.to(dtype)

    def rand(self, *shape, dtype):
        return torch.rand(*shape, dtype=torch.float64, generator=self.gen).to(dtype)

    def quarters(self, *shape, dtype):
        """Multiples of 1/4 in [-4, 4]: products with powers of two are exact in every dtype."""
        return ((torch.randn(*shape, dtype=torch.float64, generator=self.gen) * 4).round() / 4).to(dtype)

    def powers_of_two(self, *shape, dtype):
        return (2.0 ** torch.randint(-1, 2, shape, generator=self.gen).double()).to(dtype)

    def spd(self, batch, n, dtype):
        x = torch.randn(batch, n, 2 * n + 3, dtype=torch.float64, generator=self.gen)
        return reference.covpool(x).add_(0.1 * torch.eye(n, dtype=torch.float64)).to(dtype)


def acc(dtype):
    return torch.float32 if dtype in HALF else dtype


# ---- the cases: each runs one op's forward and backward kernels and returns what to compare -----------


def covpool_case(be, dtype, rng, B, C, M, offset=3.0):
    x = rng.randn(B, C, M, dtype=dtype, offset=offset)  # a non-zero mean: centring matters
    g = rng.randn(B, C, C, dtype=dtype)  # not symmetric
    out, grad_x = be.op.covpool(x), be.op.covpool_backward(g, x)
    (ref_grad,) = grads(reference.covpool, [x], [g])
    # The CPU backward does not centre (S·X − (S·μ)·1ᵀ: error linear in |μ|/σ): compared for small means only.
    cpu_grad = be.cpu(K.covpool_backward, g, x) if abs(offset) < 100 else None
    return [Output("covpool", out, reference.covpool(x.double()), be.cpu(K.covpool, x)),
            Output("covpool_backward", grad_x, ref_grad, cpu_grad)]


def sqrtm_case(be, dtype, rng, B, n, iters, zero_trace=True):
    a = rng.spd(B, n, dtype)
    if zero_trace and B > 1:
        a[B // 2] = 0  # its root and gradient are defined as 0
    g = rng.randn(B, n, n, dtype=dtype)
    out, saved = be.op.sqrtm_newton_schulz(a, iters, True)
    inference, nothing = be.op.sqrtm_newton_schulz(a, iters, False)
    assert nothing.numel() == 0 and saved.shape == (max(3 * iters - 4, 0), B, n, n) and saved.dtype == acc(dtype)
    from_saved = be.op.sqrtm_newton_schulz_backward(g, a, saved, iters)
    recomputed = be.op.sqrtm_newton_schulz_backward(g, a, torch.empty(0, dtype=acc(dtype)), iters)
    expected = reference.sqrtm_newton_schulz(a.double(), iters)
    (ref_grad,) = grads(lambda t: reference.sqrtm_newton_schulz(t, iters), [a], [g])
    cpu_out = first(be.cpu(K.sqrtm_newton_schulz, a, iters, False))
    cpu_grad = be.cpu(K.sqrtm_newton_schulz_backward, g, a, torch.empty(0, dtype=acc(dtype)), iters)
    return [Output("sqrtm", out, expected, cpu_out), Output("sqrtm (inference)", inference, out.double(), exact=True),
            Output("sqrtm_backward (saved iterates)", from_saved, ref_grad, cpu_grad),
            Output("sqrtm_backward (recomputed)", recomputed, ref_grad, cpu_grad)]


def triuvec_case(be, dtype, rng, B, n):
    a = rng.randn(B, n, n, dtype=dtype)
    g = rng.randn(B, n * (n + 1) // 2, dtype=dtype)
    (ref_grad,) = grads(reference.triuvec, [a], [g])
    return [Output("triuvec", be.op.triuvec(a), reference.triuvec(a.double()), be.cpu(K.triuvec, a), exact=True),
            Output("triuvec_backward", be.op.triuvec_backward(g, n), ref_grad, be.cpu(K.triuvec_backward, g, n),
                   exact=True)]


def criss_cross_maps_case(be, dtype, rng, B, C, H, W):
    q, k, x = (rng.randn(B, C, H, W, dtype=dtype) for _ in range(3))
    attn = rng.randn(B, H + W - 1, H, W, dtype=dtype)
    return [Output("criss_cross_affinity", be.op.criss_cross_affinity(q, k),
                   reference.criss_cross_affinity(q.double(), k.double()), be.cpu(K.criss_cross_affinity, q, k)),
            Output("criss_cross_aggregate", be.op.criss_cross_aggregate(attn, x),
                   reference.criss_cross_aggregate(attn.double(), x.double()),
                   be.cpu(K.criss_cross_aggregate, attn, x)),
            Output("criss_cross_aggregate_transposed", be.op.criss_cross_aggregate_transposed(attn, x),
                   reference.criss_cross_aggregate_transposed(attn.double(), x.double()),
                   be.cpu(K.criss_cross_aggregate_transposed, attn, x))]


def criss_cross_attention_case(be, dtype, rng, B, Cq, H, W, Cv):
    # q·k of unit size whatever Cq, as trained layers have: with logits of size √Cq the softmax saturates and
    # the backward's D = Σ g·out, from the output rounded to a half type, leaves no significant digit.
    q, k = (rng.randn(B, Cq, H, W, dtype=dtype, scale=Cq ** -0.25) for _ in range(2))
    v, g = rng.randn(B, Cv, H, W, dtype=dtype), rng.randn(B, Cv, H, W, dtype=dtype)
    out, lse = be.op.criss_cross_attention(q, k, v)
    assert lse.dtype == acc(dtype)
    gq, gk, gv = be.op.criss_cross_attention_backward(g, q, k, v, out, lse)
    ref_grads = grads(reference.criss_cross_attention, [q, k, v], [g])
    cpu = be.cpu(K.criss_cross_attention, q, k, v)
    cpu_grads = None if cpu is None else be.cpu(K.criss_cross_attention_backward, g, q, k, v, *cpu)
    expected_lse = reference.criss_cross_affinity(q.double(), k.double()).logsumexp(dim=1)
    return [Output("criss_cross_attention", out, reference.criss_cross_attention(q.double(), k.double(), v.double()),
                   first(cpu)),
            Output("criss_cross_attention lse", lse, expected_lse, item(cpu, 1)),
            *(Output(f"criss_cross_attention_backward {name}", got, ref, item(cpu_grads, i))
              for i, (name, got, ref) in enumerate(zip("qkv", (gq, gk, gv), ref_grads)))]


def region_assign_case(be, dtype, rng, B, R, C, H, W, ties=False):
    outputs, guide = rng.randn(B, R, C, H, W, dtype=dtype), rng.randn(B, R, H, W, dtype=dtype)
    if ties and B * H * W > 0 and R > 1:
        guide[0, 1, 0, 0] = guide[0, 0, 0, 0]  # a tie: the first region wins, as torch.argmax
        guide[0, R - 1, -1, -1] = math.nan  # a NaN wins, as torch.argmax; the softmax gradient is NaN there
    g = rng.randn(B, C, H, W, dtype=dtype)
    grad_outputs, grad_guide = be.op.region_assign_backward(g, outputs, guide)
    # The selection and the outputs' straight-through gradient from torch.argmax (the reference's value is
    # NaN at a NaN guide, through its softmax term); the guide's gradient from the reference.
    selected = torch.zeros(B, R, H, W, dtype=torch.float64).scatter_(1, guide.argmax(dim=1, keepdim=True), 1)
    expected = (outputs.double() * selected.unsqueeze(2)).sum(dim=1)
    _, ref_guide = grads(reference.region_assign, [outputs, guide], [g])
    cpu = be.cpu(K.region_assign_backward, g, outputs, guide)
    return [Output("region_assign", be.op.region_assign(outputs, guide), expected,
                   be.cpu(K.region_assign, outputs, guide), exact=True),
            Output("region_assign_backward outputs", grad_outputs, g.double().unsqueeze(1) * selected.unsqueeze(2),
                   item(cpu, 0), exact=True),
            Output("region_assign_backward guide", grad_guide, ref_guide, item(cpu, 1))]


def dynamic_conv_case(be, dtype, rng, B, Cin, Cout, H, W, R, kh, kw, stride, padding, dilation):
    geometry = [list(stride), list(padding), list(dilation)]
    Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    x, filters = rng.randn(B, Cin, H, W, dtype=dtype), rng.randn(B, R, Cout, Cin, kh, kw, dtype=dtype)
    guide, g = rng.randn(B, R, Ho, Wo, dtype=dtype), rng.randn(B, Cout, Ho, Wo, dtype=dtype)
    out = be.op.dynamic_region_conv(x, filters, guide, *geometry)
    got = be.op.dynamic_region_conv_backward(g, x, filters, guide, *geometry)
    ref = lambda *t: reference.dynamic_region_conv(*t, stride, padding, dilation)  # noqa: E731
    ref_grads = grads(ref, [x, filters, guide], [g])
    cpu_grads = be.cpu(K.dynamic_region_conv_backward, g, x, filters, guide, *geometry)
    return [Output("dynamic_region_conv", out, ref(x.double(), filters.double(), guide.double()),
                   be.cpu(K.dynamic_region_conv, x, filters, guide, *geometry)),
            *(Output(f"dynamic_region_conv_backward {name}", got[i], ref_grads[i], item(cpu_grads, i))
              for i, name in enumerate(("x", "filters", "guide")))]


def channel_pool_case(be, dtype, rng, B, C, H, W, ties=False):
    x = rng.quarters(B, C, H, W, dtype=dtype)  # quarters: many tied maxima
    if ties and B * C > 0:
        x[0, 0] = 1.25  # a whole plane tied
    gm, gmax = rng.randn(B, C, dtype=dtype), rng.randn(B, C, dtype=dtype)
    mean, mx = be.op.channel_pool(x)
    ref_x, = grads(reference.channel_pool, [x], [gm, gmax])
    ref_mean_only, = grads(reference.channel_pool, [x], [gm, None])
    ref_max_only, = grads(reference.channel_pool, [x], [None, gmax])
    ref_mean, ref_max = reference.channel_pool(x.double())
    cpu = be.cpu(K.channel_pool, x)
    return [Output("channel_pool mean", mean, ref_mean, item(cpu, 0)),
            Output("channel_pool max", mx, ref_max, item(cpu, 1), exact=True),
            Output("channel_pool_backward", be.op.channel_pool_backward(gm, gmax, x, mx), ref_x,
                   be.cpu(K.channel_pool_backward, gm, gmax, x, mx)),
            Output("channel_pool_backward (mean only)", be.op.channel_pool_backward(gm, None, x, mx), ref_mean_only),
            Output("channel_pool_backward (max only)", be.op.channel_pool_backward(None, gmax, x, mx), ref_max_only)]


def spatial_pool_case(be, dtype, rng, B, C, H, W, gate=True):
    x = rng.quarters(B, C, H, W, dtype=dtype)
    cg = rng.powers_of_two(B, C, dtype=dtype) if gate else None  # x·gate exact: the same ties as the reference
    pooled = be.op.spatial_pool(x, cg)
    g = rng.randn(B, 2, H, W, dtype=dtype)
    got = be.op.spatial_pool_backward(g, x, cg, pooled)
    ref = grads(reference.spatial_pool, [x, cg], [g])
    cpu = be.cpu(K.spatial_pool_backward, g, x, cg, pooled)
    return [Output("spatial_pool", pooled, reference.spatial_pool(x.double(), f64(cg)), be.cpu(K.spatial_pool, x, cg)),
            *gradient_outputs("spatial_pool_backward", ("x", "gate"), (x, cg), got, ref, cpu)]


def apply_gates_case(be, dtype, rng, B, C, H, W, gates="both"):
    x, g = rng.randn(B, C, H, W, dtype=dtype), rng.randn(B, C, H, W, dtype=dtype)
    cg = rng.rand(B, C, dtype=dtype) if gates in ("channel", "both") else None
    pg = rng.rand(B, 1, H, W, dtype=dtype) if gates in ("pixel", "both") else None
    got = be.op.apply_gates_backward(g, x, cg, pg)
    ref = grads(reference.apply_gates, [x, cg, pg], [g])
    cpu = be.cpu(K.apply_gates_backward, g, x, cg, pg)
    return [Output("apply_gates", be.op.apply_gates(x, cg, pg), reference.apply_gates(x.double(), f64(cg), f64(pg)),
                   be.cpu(K.apply_gates, x, cg, pg)),
            *gradient_outputs("apply_gates_backward", ("x", "channel_gate", "pixel_gate"), (x, cg, pg), got, ref, cpu)]


def group_enhance_case(be, dtype, rng, B, C, H, W, G, constant=False):
    x, g = rng.randn(B, C, H, W, dtype=dtype), rng.randn(B, C, H, W, dtype=dtype)
    if constant:
        x[0, :C // G] = 0  # a group whose similarity is constant (std 0)
    w, b = rng.randn(G, dtype=dtype), rng.randn(G, dtype=dtype)
    got = be.op.group_enhance_backward(g, x, w, b, G)
    ref = grads(lambda *t: reference.group_enhance(*t, G), [x, w, b], [g])
    cpu = be.cpu(K.group_enhance_backward, g, x, w, b, G)
    return [Output("group_enhance", be.op.group_enhance(x, w, b, G), reference.group_enhance(x.double(), w.double(),
                                                                                             b.double(), G),
                   be.cpu(K.group_enhance, x, w, b, G)),
            *gradient_outputs("group_enhance_backward", ("x", "weight", "bias"), (x, w, b), got, ref, cpu)]


def window_attention_case(be, dtype, rng, B, H, W, heads, d, window, shift, bias=True, mask=False):
    N, nW = window * window, (H // window) * (W // window)
    qkv = rng.randn(B, H, W, 3, heads, d, dtype=dtype)
    b = rng.randn(heads, N, N, dtype=dtype) if bias else None
    m = None
    if mask == "random":
        m = rng.randn(nW, N, N, dtype=dtype)
    elif mask == "-inf at key 0":  # a user's mask with −inf logits, the first key of every row among them
        m = torch.zeros(nW, N, N, dtype=dtype)
        m[:, :, 0] = -math.inf
        m[:, ::2, N // 2] = -math.inf
    scale = d ** -0.5
    out, lse = be.op.window_attention(qkv, b, m, window, shift, scale)
    g = rng.randn(B, H, W, heads, d, dtype=dtype)
    got = be.op.window_attention_backward(g, qkv, b, m, out, lse, window, shift, scale)
    ref = lambda q, bb: reference.window_attention(q, bb, window, shift, f64(m), scale)  # noqa: E731
    ref_grads = grads(ref, [qkv, b], [g])
    cpu = be.cpu(K.window_attention, qkv, b, m, window, shift, scale)
    cpu_grads = None if cpu is None else be.cpu(K.window_attention_backward, g, qkv, b, m, *cpu, window, shift, scale)
    return [Output("window_attention", out, ref(qkv.double(), f64(b)), item(cpu, 0)),
            Output("window_attention lse", lse, lse.double() if cpu is None else cpu[1].double()),
            *gradient_outputs("window_attention_backward", ("qkv", "bias"), (qkv, b), got, ref_grads, cpu_grads)]


@dataclass
class Case:
    """One op at one shape: fn(backend, dtype, inputs, **kwargs) -> [Output]."""

    id: str
    fn: Callable
    kwargs: Dict
    marks: List = field(default_factory=list)
    sanitized: bool = True  # also under the emulator's sanitized builds (False: blocks of 1024 OS threads there)

    def run(self, be, dtype, seed=0):
        return self.fn(be, dtype, Inputs(seed), **self.kwargs)

    def param(self):
        import pytest  # the tests only: scripts/kernel_sweep.py runs without pytest

        return pytest.param(self, id=self.id, marks=self.marks)


CASES = [
    # covpool (centring, then batched GEMMs): 1×1, odd sizes, rows longer than a GEMM's K tile; a mean 10⁴
    # times the spread (centring first keeps float32 at its usual error where X·Xᵀ/M − μ·μᵀ would lose it)
    Case("covpool-small", covpool_case, dict(B=2, C=5, M=7)),
    Case("covpool-odd", covpool_case, dict(B=3, C=35, M=21)),
    Case("covpool-1x1", covpool_case, dict(B=1, C=1, M=1)),
    Case("covpool-long-rows", covpool_case, dict(B=2, C=17, M=300)),
    Case("covpool-large-mean", covpool_case, dict(B=2, C=9, M=50, offset=1e4)),
    # Newton–Schulz in one block: 1 to 5 iterations, a zero-trace matrix in the batch, n = 1, n > 16 (ragged
    # cells), n = 64 (the whole tile, the largest one-block size; 65: batched GEMMs); n = 40 needs
    # (7·41·40 + 256)·8 bytes > 48 KiB of shared memory in float64: the opt-in
    Case("sqrtm-1-iter", sqrtm_case, dict(B=3, n=6, iters=1)),
    Case("sqrtm-2-iters", sqrtm_case, dict(B=3, n=6, iters=2)),
    Case("sqrtm-5-iters", sqrtm_case, dict(B=2, n=17, iters=5)),
    Case("sqrtm-n1", sqrtm_case, dict(B=2, n=1, iters=3)),
    Case("sqrtm-opt-in", sqrtm_case, dict(B=2, n=40, iters=2, zero_trace=False)),
    Case("sqrtm-one-tile", sqrtm_case, dict(B=2, n=64, iters=3)),
    Case("sqrtm-batched", sqrtm_case, dict(B=2, n=65, iters=3)),
    Case("triuvec-n1", triuvec_case, dict(B=3, n=1)),
    Case("triuvec", triuvec_case, dict(B=2, n=7)),
    Case("triuvec-many-blocks", triuvec_case, dict(B=3, n=30)),
    # criss-cross: P = H + W − 1 from 1 to several times the 32 lanes of a softmax warp, in the row and in the
    # column, and rows and columns longer than the 128 positions a softmax warp holds in registers; channels
    # past one 32-channel tile of the pixel-major copies; images narrower than a 32-wide tile
    Case("criss-cross-maps", criss_cross_maps_case, dict(B=2, C=3, H=5, W=7)),
    # a 1×1 affinity is q·k alone: three samples, so that one cancelling to near 0 does not set the scale
    Case("criss-cross-maps-1x1", criss_cross_maps_case, dict(B=3, C=2, H=1, W=1)),
    Case("criss-cross-maps-column", criss_cross_maps_case, dict(B=1, C=4, H=9, W=1)),
    Case("criss-cross-attention", criss_cross_attention_case, dict(B=2, Cq=3, H=4, W=7, Cv=5)),
    Case("criss-cross-attention-1x1", criss_cross_attention_case, dict(B=1, Cq=1, H=1, W=1, Cv=2)),
    Case("criss-cross-attention-wide", criss_cross_attention_case, dict(B=1, Cq=2, H=2, W=140, Cv=3)),
    Case("criss-cross-attention-many-channels", criss_cross_attention_case, dict(B=1, Cq=130, H=3, W=2, Cv=131)),
    Case("criss-cross-attention-column", criss_cross_attention_case, dict(B=2, Cq=2, H=70, W=1, Cv=3)),
    Case("criss-cross-attention-tall", criss_cross_attention_case, dict(B=1, Cq=2, H=140, W=2, Cv=3)),
    # CUDA: the row products one GEMM over every sample's rows (written into the row layout and added back by
    # the transposes, which step the (channel, row) pair of their image rows: H < 8, H > 8 over several tiles,
    # H = 1; criss_cross_cuda.cu: rows_in_one_call); in square images one GEMM with the columns, q and k past one
    # 32-channel tile
    Case("criss-cross-attention-batch", criss_cross_attention_case, dict(B=4, Cq=3, H=5, W=6, Cv=4)),
    Case("criss-cross-attention-batch-tall", criss_cross_attention_case, dict(B=3, Cq=2, H=11, W=5, Cv=40)),
    Case("criss-cross-attention-batch-flat", criss_cross_attention_case, dict(B=3, Cq=2, H=1, W=9, Cv=5)),
    Case("criss-cross-attention-square", criss_cross_attention_case, dict(B=2, Cq=40, H=6, W=6, Cv=40)),
    # region assignment: ties and a NaN in the guide, one region; several 32-pixel tiles (the last ragged)
    # and more channels than the 8 slices
    Case("region-assign", region_assign_case, dict(B=2, R=3, C=4, H=5, W=6, ties=True)),
    Case("region-assign-one-region", region_assign_case, dict(B=1, R=1, C=3, H=4, W=2)),
    Case("region-assign-tiles", region_assign_case, dict(B=2, R=4, C=11, H=9, W=10, ties=True)),
    # dynamic region convolution: stride, padding, dilation, non-square kernels, 1×1
    Case("drconv-3x3", dynamic_conv_case, dict(B=2, Cin=3, Cout=4, H=7, W=6, R=3, kh=3, kw=3, stride=(1, 1),
                                               padding=(1, 1), dilation=(1, 1))),
    Case("drconv-stride-dilation", dynamic_conv_case, dict(B=1, Cin=2, Cout=3, H=11, W=9, R=4, kh=3, kw=2,
                                                           stride=(2, 1), padding=(2, 0), dilation=(2, 3))),
    Case("drconv-1x1-stride", dynamic_conv_case, dict(B=2, Cin=4, Cout=2, H=5, W=6, R=2, kh=1, kw=1, stride=(2, 2),
                                                      padding=(0, 0), dilation=(1, 1))),
    # the tiled products past one tile: Cout = 70 (two 64-row tiles, two guide slices), K = 81 taps (two
    # tiles, six reduction steps), ~78 pixels a region (two column tiles); regions with no pixel; no output channel
    Case("drconv-many-tiles", dynamic_conv_case, dict(B=2, Cin=9, Cout=70, H=12, W=13, R=2, kh=3, kw=3,
                                                      stride=(1, 1), padding=(1, 1), dilation=(1, 1))),
    Case("drconv-empty-regions", dynamic_conv_case, dict(B=2, Cin=2, Cout=3, H=2, W=3, R=7, kh=1, kw=1,
                                                         stride=(1, 1), padding=(0, 0), dilation=(1, 1))),
    Case("drconv-no-output-channels", dynamic_conv_case, dict(B=2, Cin=2, Cout=0, H=4, W=3, R=2, kh=3, kw=3,
                                                              stride=(1, 1), padding=(1, 1), dilation=(1, 1))),
    # gating: channel_pool's warp-a-plane kernel with 1-element, 2-element (H·W = 30) and 16-byte chunks (H·W =
    # 24: 4 float32, 8 bf16), and its block-a-plane kernel past 512 chunks (33·33 = 1089 odd positions), the
    # backward's planes longer than its 256 threads; tied maxima; the per-pixel channel reductions with 8, 16
    # (C = 129) and 32 (C = 257) channel slices, the fewest channels that take them (32 slices: not under the
    # sanitizers, whose threads are OS threads — ~15 s a case; the 16-slice cases run the same code there);
    # gates present or not
    Case("channel-pool", channel_pool_case, dict(B=2, C=3, H=5, W=7, ties=True)),
    Case("channel-pool-long-planes", channel_pool_case, dict(B=1, C=2, H=17, W=19)),
    Case("channel-pool-pairs", channel_pool_case, dict(B=3, C=5, H=5, W=6, ties=True)),
    Case("channel-pool-chunks", channel_pool_case, dict(B=2, C=9, H=4, W=6)),
    Case("channel-pool-block-planes", channel_pool_case, dict(B=1, C=2, H=33, W=33, ties=True)),
    Case("spatial-pool-gate", spatial_pool_case, dict(B=2, C=5, H=4, W=6, gate=True)),
    Case("spatial-pool-no-gate", spatial_pool_case, dict(B=1, C=7, H=17, W=16, gate=False)),
    Case("spatial-pool-16-slices", spatial_pool_case, dict(B=1, C=129, H=2, W=3, gate=True)),
    Case("spatial-pool-32-slices", spatial_pool_case, dict(B=1, C=257, H=2, W=3, gate=True), sanitized=False),
    Case("apply-gates-32-slices", apply_gates_case, dict(B=1, C=257, H=2, W=3, gates="both"), sanitized=False),
    Case("apply-gates-both", apply_gates_case, dict(B=2, C=3, H=5, W=7, gates="both")),
    Case("apply-gates-channel", apply_gates_case, dict(B=1, C=4, H=17, W=16, gates="channel")),
    Case("apply-gates-pixel", apply_gates_case, dict(B=2, C=3, H=3, W=5, gates="pixel")),
    # group_enhance: more positions than the block's 256 threads; more channels than its 8 warps; one position
    # (ĉ = 0); an all-zero group (std 0: no gradient through it)
    Case("group-enhance", group_enhance_case, dict(B=2, C=6, H=5, W=7, G=3)),
    Case("group-enhance-long-groups", group_enhance_case, dict(B=1, C=4, H=17, W=19, G=2)),
    Case("group-enhance-many-channels", group_enhance_case, dict(B=2, C=20, H=3, W=3, G=1)),
    Case("group-enhance-one-position", group_enhance_case, dict(B=2, C=4, H=1, W=1, G=2)),
    Case("group-enhance-zero-group", group_enhance_case, dict(B=2, C=6, H=4, W=3, G=3, constant=True)),
    # window attention: windows of 7 (49 tokens, 64 threads: 15 idle) and 8, shifted or not, masks, no bias;
    # 6 (36 tokens: 3 row tiles, the tensor-core backward's second half of key tiles half full); in fp16/bf16
    # these run the tensor-core forward (N ≤ 64, d ≤ 64), the last three the SIMT one
    Case("window-8", window_attention_case, dict(B=2, H=16, W=8, heads=2, d=5, window=8, shift=0)),
    Case("window-8-shift", window_attention_case, dict(B=1, H=16, W=16, heads=2, d=4, window=8, shift=4,
                                                       mask="random")),
    Case("window-7-shift", window_attention_case, dict(B=1, H=14, W=7, heads=3, d=3, window=7, shift=3)),
    Case("window-7-mask-no-bias", window_attention_case, dict(B=2, H=7, W=14, heads=1, d=6, window=7, shift=0,
                                                              bias=False, mask="random")),
    Case("window-6-shift-mask", window_attention_case, dict(B=1, H=12, W=6, heads=2, d=5, window=6, shift=3,
                                                            mask="random")),
    Case("window-4-inf-mask", window_attention_case, dict(B=1, H=4, W=8, heads=2, d=4, window=4, shift=0,
                                                          mask="-inf at key 0")),
    Case("window-4-d64", window_attention_case, dict(B=1, H=8, W=8, heads=1, d=64, window=4, shift=2)),
    Case("window-5-d24", window_attention_case, dict(B=1, H=10, W=5, heads=2, d=24, window=5, shift=2,
                                                     mask="random")),
    Case("window-9", window_attention_case, dict(B=1, H=9, W=9, heads=2, d=3, window=9, shift=0)),
    Case("window-4-d65", window_attention_case, dict(B=1, H=4, W=4, heads=1, d=65, window=4, shift=0)),
]


GRID_STRIDE_CASES = [
    Case("triuvec", triuvec_case, dict(B=3, n=30)),
    Case("criss-cross-maps", criss_cross_maps_case, dict(B=2, C=3, H=9, W=11)),
    Case("spatial-pool", spatial_pool_case, dict(B=2, C=3, H=19, W=17, gate=True)),
    Case("channel-pool", channel_pool_case, dict(B=1, C=20, H=2, W=4)),  # 20 planes, 16 warps: the plane loop wraps
    Case("apply-gates", apply_gates_case, dict(B=2, C=3, H=13, W=11, gates="both")),
]


EMPTY_CASES = [
    Case("empty-covpool", covpool_case, dict(B=0, C=3, M=4)),
    Case("empty-sqrtm", sqrtm_case, dict(B=0, n=3, iters=2)),
    Case("empty-triuvec", triuvec_case, dict(B=0, n=3)),
    Case("empty-criss-cross-maps", criss_cross_maps_case, dict(B=0, C=2, H=3, W=4)),
    Case("empty-criss-cross-attention", criss_cross_attention_case, dict(B=0, Cq=2, H=3, W=4, Cv=3)),
    # no value channels at a batch whose row products take one call (CUDA: the row-layout copies of v and g),
    # apart from the columns' and (square) with them
    Case("empty-criss-cross-attention-values", criss_cross_attention_case, dict(B=4, Cq=2, H=3, W=4, Cv=0)),
    Case("empty-criss-cross-attention-values-square", criss_cross_attention_case, dict(B=2, Cq=2, H=4, W=4, Cv=0)),
    Case("empty-region-assign", region_assign_case, dict(B=0, R=2, C=3, H=4, W=5)),
    Case("empty-drconv", dynamic_conv_case, dict(B=0, Cin=2, Cout=3, H=5, W=5, R=2, kh=3, kw=3, stride=(1, 1),
                                           padding=(1, 1), dilation=(1, 1))),
    Case("empty-channel-pool", channel_pool_case, dict(B=0, C=3, H=4, W=5)),
    Case("empty-spatial-pool", spatial_pool_case, dict(B=0, C=3, H=4, W=5)),
    Case("empty-apply-gates", apply_gates_case, dict(B=0, C=3, H=4, W=5)),
    Case("empty-group-enhance", group_enhance_case, dict(B=0, C=4, H=4, W=5, G=2)),
    Case("empty-group-enhance-positions", group_enhance_case, dict(B=2, C=4, H=0, W=5, G=2)),
    Case("empty-window-attention", window_attention_case, dict(B=0, H=8, W=8, heads=2, d=3, window=4, shift=2)),
]


# ---- the kernels in the sources ----


def _kernel_sources():
    """(log key, body text) of every __global__ function of csrc/*/*_cuda.cu and of the family headers
    (csrc/<family>/*.cuh) they include: the key names the .cu file that launches it."""
    for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "*", "*_cuda.cu"))):
        with open(path) as f:
            text = f.read()
        family = os.path.basename(os.path.dirname(path))
        for header in re.findall(rf'#include "{family}/(\w+\.cuh)"', text):
            with open(os.path.join(os.path.dirname(path), header)) as f:
                text += f.read()
        starts = [m for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", text)]
        for m, following in zip(starts, starts[1:] + [None]):
            body = text[m.end():following.start() if following else len(text)]
            yield f"{os.path.basename(path)}:{m.group(1)}", body


def cuda_kernels():
    """Every CUDA kernel, as "file.cu:name" (the emulator's launch-log key)."""
    return {key for key, _ in _kernel_sources()}


def tensor_core_kernels():
    """The kernels on tensor cores (named mma_*, as scripts/sass_check.py expects): fp16 and bf16 only."""
    return {key for key, _ in _kernel_sources() if key.split(":")[1].startswith("mma_")}


def grid_stride_kernels():
    """The kernels whose body is a grid-stride loop over their elements (or a block- or warp-stride loop over rows)."""
    loops = ("ATTNKERN_GRID_STRIDE_LOOP", "ATTNKERN_BLOCK_STRIDE_LOOP", "ATTNKERN_WARP_STRIDE_LOOP",
             "reduce_channels_per_pixel(")
    return {key for key, body in _kernel_sources() if any(loop in body.split("\n}\n")[0] for loop in loops)}


