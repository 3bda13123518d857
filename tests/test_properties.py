"""Property-based tests (hypothesis), one pair per family: random valid arguments — sizes 0, 1 and odd,
transposed / sliced / expanded / channels_last strides, float32 and float64, values with NaN and ±inf —
against the references; and random bad arguments, each a ValueError or TypeError that names the
argument, raised alike by attnkern.ops, torch.ops.attnkern, the check op and the reference path.

The comparison (README, "Bad input, NaN and inf"): an output is non-finite exactly where the reference's
is, and equal to it elsewhere; a gradient is equal to the reference's wherever that one is finite.
Every torch.empty is NaN-poisoned (conftest), so an element a kernel leaves unwritten fails too.
"""

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from conftest import SEED
from specs import OPS, outputs, raise_same_error

SETTINGS = settings(max_examples=60, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}
SPECIAL = [math.nan, math.inf, -math.inf]
LAYOUTS = ["contiguous", "transposed", "sliced", "expanded", "channels_last"]

sizes = st.sampled_from([0, 1, 1, 2, 3, 3, 4, 5, 5, 7])  # 0 one time in ten, odd sizes most often
positive = st.sampled_from([1, 2, 3, 5, 7])
dtypes = st.sampled_from([torch.float32, torch.float64])


# ---- tensors with random values, special values and strides ----------------------------------


@st.composite
def tensors(draw, shape, dtype, special=True, positive_values=False):
    """A tensor of the given shape: normal values (|·| + 0.1 with positive_values), some entries
    replaced by NaN/±inf (when special), laid out with random strides."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    values = torch.randn(shape, dtype=torch.float64, generator=generator)
    if positive_values:
        values = values.abs() + 0.1
    if special and values.numel() > 0:
        for index, value in draw(st.lists(st.tuples(st.integers(0, 2**16), st.sampled_from(SPECIAL)), max_size=2)):
            values.view(-1)[index % values.numel()] = value
    return with_layout(values.to(dtype), draw(st.sampled_from(LAYOUTS)), draw(st.integers(0, 7)))


def with_layout(t, layout, pick):
    """t's values (for "expanded": its first slice along a dim, repeated) in a non-default layout."""
    if t.dim() < 2 or t.numel() == 0:
        return t
    a = pick % t.dim()
    if layout == "transposed":
        b = (a + 1) % t.dim()
        return t.transpose(a, b).contiguous().transpose(a, b)
    if layout == "sliced":
        wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), math.nan, dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "expanded":
        return t.narrow(a, 0, 1).expand(t.shape)
    if layout == "channels_last" and t.dim() in (4, 5):
        return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
    return t


# ---- comparison with the reference -----------------------------------------------------------


def assert_matches(got, expected, dtype, what):
    assert got.shape == expected.shape, what
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(got), finite), f"{what}: non-finite where the reference is not, or vice versa"
    g, e = got[finite].double(), expected[finite].double()
    scale = max(e.norm().item(), 1.0)  # an all-zero or tiny reference: absolute error at unit scale
    assert (g - e).norm().item() <= TOLERANCE[dtype] * scale, what


def assert_gradient_matches(got, expected, dtype, what):
    """Where the reference's gradient is finite, equal to it (see the module docstring)."""
    assert got.shape == expected.shape, what
    finite = torch.isfinite(expected)
    assert torch.isfinite(got[finite]).all(), f"{what}: non-finite where the reference's gradient is finite"
    g, e = got[finite].double(), expected[finite].double()
    assert (g - e).norm().item() <= TOLERANCE[dtype] * max(e.norm().item(), 1.0), what


def check_against_reference(name, args, dtype):
    """attnkern.ops.<name>(*args) against attnkern.reference.<name> on the same values (in float64),
    forward and, for the differentiable tensor arguments, backward; and the op's check op accepts the
    arguments (the reference path, as in portable mode, runs it before the reference)."""
    op = OPS[name]
    assert op.check(*args) is None
    leaves = [a.detach().requires_grad_() if i in op.grads and isinstance(a, torch.Tensor) else a
              for i, a in enumerate(args)]
    ref_leaves = [a.detach().double().requires_grad_() if i in op.grads and isinstance(a, torch.Tensor)
                  else (a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a)
                  for i, a in enumerate(args)]
    outs, expected = outputs(op.fn(*leaves)), outputs(op.ref(*ref_leaves))
    for i, (o, e) in enumerate(zip(outs, expected)):
        assert o.dtype == dtype
        assert_matches(o, e, dtype, f"{name} output {i}")
    wrt = [(i, leaves[i], ref_leaves[i]) for i in op.grads if isinstance(leaves[i], torch.Tensor)]
    if not wrt or not any(o.numel() for o in outs):
        return
    generator = torch.Generator().manual_seed(len(name))
    grads = [torch.randn(e.shape, dtype=torch.float64, generator=generator) for e in expected]
    got = torch.autograd.grad(outs, [w[1] for w in wrt], [g.to(dtype) for g in grads], allow_unused=True)
    want = torch.autograd.grad(expected, [w[2] for w in wrt], grads, allow_unused=True)
    for (i, leaf, _), g, w in zip(wrt, got, want):
        g = torch.zeros_like(leaf) if g is None else g
        w = torch.zeros(leaf.shape, dtype=torch.float64) if w is None else w
        assert_gradient_matches(g, w, dtype, f"{name} gradient of argument {i}")


# ---- valid arguments, per family -------------------------------------------------------------


@st.composite
def covpool_args(draw):
    dtype = draw(dtypes)
    name = draw(st.sampled_from(["covpool", "sqrtm_newton_schulz", "triuvec"]))
    B, C = draw(sizes), draw(sizes)
    if name == "covpool":
        spatial = draw(st.sampled_from([(positive,), (positive, positive)]))
        return name, (draw(tensors((B, C, *(draw(s) for s in spatial)), dtype)),), dtype
    if name == "triuvec":
        return name, (draw(tensors((B, C, C), dtype)),), dtype
    # Newton–Schulz is meant for symmetric positive definite matrices: m·mᵀ + I, then its special values.
    m = draw(tensors((B, C, C), torch.float64, special=False))
    a = m @ m.mT + torch.eye(C, dtype=torch.float64)
    specials = draw(st.lists(st.tuples(st.integers(0, 2**16), st.sampled_from(SPECIAL)), max_size=1))
    for index, value in specials if a.numel() else []:
        a.view(-1)[index % a.numel()] = value
    # (not "expanded": repeated rows make a singular non-symmetric matrix, on which float32 Newton–Schulz
    # loses digits in the reference as much as in the kernel)
    a = with_layout(a.to(dtype), draw(st.sampled_from(["contiguous", "transposed", "sliced"])), draw(st.integers(0, 7)))
    return name, (a, draw(st.integers(1, 6))), dtype


@st.composite
def criss_cross_args(draw):
    dtype = draw(dtypes)
    name = draw(st.sampled_from(["criss_cross_affinity", "criss_cross_aggregate", "criss_cross_attention"]))
    B, C, H, W = draw(sizes), draw(sizes), draw(sizes), draw(sizes)
    if H == W == 0:
        H = 1
    q = draw(tensors((B, C, H, W), dtype))
    if name == "criss_cross_affinity":
        return name, (q, draw(tensors((B, C, H, W), dtype))), dtype
    if name == "criss_cross_aggregate":
        return name, (draw(tensors((B, H + W - 1, H, W), dtype)), q), dtype
    return name, (q, draw(tensors((B, C, H, W), dtype)), draw(tensors((B, draw(sizes), H, W), dtype))), dtype


@st.composite
def conv_geometry(draw):
    """(x, filters, guide sizes, stride, padding, dilation): a geometry whose kernel fits."""
    kh, kw = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.sampled_from([1, 2, (1, 2)]))
    padding = draw(st.sampled_from([0, 1, (2, 0)]))
    dilation = draw(st.sampled_from([1, 2, (2, 1)]))
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 7))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 7))
    Ho, Wo = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    B, Cin, Cout, R = draw(sizes), draw(positive), draw(sizes), draw(positive)
    return (B, Cin, H, W), (B, R, Cout, Cin, kh, kw), (B, R, Ho, Wo), stride, padding, dilation


@st.composite
def region_conv_args(draw):
    dtype = draw(dtypes)
    if draw(st.booleans()):
        B, R, C, H, W = draw(sizes), draw(positive), draw(sizes), draw(sizes), draw(sizes)
        return "region_assign", (draw(tensors((B, R, C, H, W), dtype)), draw(tensors((B, R, H, W), dtype))), dtype
    x, f, g, stride, padding, dilation = draw(conv_geometry())
    args = (draw(tensors(x, dtype)), draw(tensors(f, dtype)), draw(tensors(g, dtype)), stride, padding, dilation)
    return "dynamic_region_conv", args, dtype


@st.composite
def gating_args(draw):
    dtype = draw(dtypes)
    name = draw(st.sampled_from(["channel_pool", "spatial_pool", "apply_gates"]))
    B, C, H, W = draw(sizes), draw(sizes), draw(sizes), draw(sizes)
    if name == "channel_pool":
        return name, (draw(tensors((B, C, draw(positive), draw(positive)), dtype)),), dtype
    if name == "spatial_pool":
        gate = draw(st.one_of(st.none(), tensors((B, max(C, 1)), dtype)))
        return name, (draw(tensors((B, max(C, 1), H, W), dtype)), gate), dtype
    gates = draw(st.sampled_from(["channel", "pixel", "both"]))
    cg = draw(tensors((B, C), dtype)) if gates != "pixel" else None
    pg = draw(tensors((B, 1, H, W), dtype)) if gates != "channel" else None
    return name, (draw(tensors((B, C, H, W), dtype)), cg, pg), dtype


@st.composite
def window_attention_args(draw):
    dtype = draw(dtypes)
    ws = draw(st.sampled_from([1, 2, 3]))
    B, H, W = draw(st.sampled_from([0, 1, 2])), ws * draw(st.sampled_from([0, 1, 2])), ws * draw(st.sampled_from([0, 1, 2]))
    heads, d, N = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2, 3])), ws * ws
    bias = draw(st.one_of(st.none(), tensors((heads, N, N), dtype)))
    mask = draw(st.one_of(st.none(), tensors(((H // ws) * (W // ws), N, N), draw(dtypes))))
    scale = draw(st.one_of(st.none(), st.sampled_from([0.5, 1, -0.25])))
    qkv = draw(tensors((B, H, W, 3, heads, d), dtype))
    return "window_attention", (qkv, bias, ws, draw(st.integers(0, ws - 1)), mask, scale), dtype


FAMILIES = {"covpool": covpool_args, "criss_cross": criss_cross_args, "region_conv": region_conv_args,
            "gating": gating_args, "window_attention": window_attention_args}


@pytest.mark.parametrize("family", FAMILIES)
def test_ops_match_references(family):
    @seed(SEED)
    @SETTINGS
    @given(FAMILIES[family]())
    def run(case):
        name, args, dtype = case
        check_against_reference(name, args, dtype)

    run()


# ---- bad arguments ---------------------------------------------------------------------------

# The positional names of each op's arguments, and which tensors must share a dtype.
NAMES = {
    "covpool": ["x"], "sqrtm_newton_schulz": ["a", "iters"], "triuvec": ["a"],
    "criss_cross_affinity": ["q", "k"], "criss_cross_aggregate": ["attn", "v"], "criss_cross_attention": ["q", "k", "v"],
    "region_assign": ["outputs", "guide"],
    "dynamic_region_conv": ["x", "filters", "guide", "stride", "padding", "dilation"],
    "channel_pool": ["x"], "spatial_pool": ["x", "gate"], "apply_gates": ["x", "channel_gate", "pixel_gate"],
    "window_attention": ["qkv", "bias", "window_size", "shift_size", "mask", "scale"],
}
# (argument, dim): sizes that must agree with another argument's (changing them is always an error).
MUST_AGREE = {
    "sqrtm_newton_schulz": [("a", 2)], "triuvec": [("a", 2)],
    "criss_cross_affinity": [("k", d) for d in range(4)], "criss_cross_aggregate": [("attn", d) for d in range(4)],
    "criss_cross_attention": [("k", d) for d in range(4)] + [("v", 0), ("v", 2), ("v", 3)],
    "region_assign": [("guide", d) for d in range(4)],
    "dynamic_region_conv": [("filters", 0), ("filters", 3)] + [("guide", d) for d in range(4)],
    "spatial_pool": [("gate", 0), ("gate", 1)],
    "apply_gates": [("channel_gate", 0), ("channel_gate", 1)] + [("pixel_gate", d) for d in range(4)],
    "window_attention": [("qkv", 3)] + [("bias", d) for d in range(3)] + [("mask", d) for d in range(3)],
}
NO_SHARED_DTYPE = {"mask"}  # any floating dtype
BAD_INTS = {  # int arguments: values that are errors whatever the tensors
    "iters": [0, -1, 1001, 2**40, 2**62, 2**63 - 1, -(2**63)],
    "window_size": [0, -2, 2**16, 2**40, 2**63 - 1, -(2**63)],
    "stride": [0, -1, (1, 0), (-(2**63), 1)], "dilation": [0, -3, (0, 1)], "padding": [-1, (0, -5), 2**62],
}
BAD_TYPES = {"iters": [2.0, True, "5", None], "window_size": [4.0, True, None], "shift_size": [False, 0.0, "0"],
             "scale": ["a", True, 1j, [1.0]], "stride": [1.0, (1, 1, 1), "1", (True, 1)],
             "padding": [0.5, (0,), None], "dilation": [(1.0, 1), False]}
TOO_BIG = [2**63, 2**64, -(2**63) - 1]


@st.composite
def bad_arguments(draw, family):
    """(name, args, argument named in the error, whether the arguments reach C++ as such)."""
    name, args, dtype = draw(FAMILIES[family]())
    args, names = list(args), NAMES[name]
    tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    kinds = ["rank", "integer dtype", "not a tensor", "other device"]
    if name in MUST_AGREE:
        kinds.append("size")
    shared = [i for i in tensor_positions if names[i] not in NO_SHARED_DTYPE]
    if len(shared) >= 2:
        kinds.append("other float dtype")
    int_args = [i for i, n in enumerate(names) if n in BAD_INTS or n in BAD_TYPES or n == "shift_size"]
    if int_args:
        kinds += ["bad value", "bad type", "too big for int64"]
    kind = draw(st.sampled_from(kinds))
    reaches_cpp = kind not in ("not a tensor", "bad type", "too big for int64", "other device")
    if kind in ("rank", "integer dtype", "not a tensor", "other device", "other float dtype", "size"):
        if kind == "size":
            arg, dim = draw(st.sampled_from(MUST_AGREE[name]))
            i = names.index(arg)
            if not isinstance(args[i], torch.Tensor):  # an absent optional tensor: mutate the first tensor instead
                return draw(bad_arguments(family))
            shape = list(args[i].shape)
            shape[dim] += 1
            args[i] = torch.randn(shape, dtype=args[i].dtype)
        else:
            i = draw(st.sampled_from(shared if kind == "other float dtype" else tensor_positions))
            t = args[i]
            if kind == "rank":
                if name == "covpool":  # the public op takes [B, C, M] and [B, C, H, W]: the raw op [B, C, M]
                    args[i], reaches_cpp = (t.flatten(0, 1) if t.dim() == 3 else t.unsqueeze(0)), False
                else:
                    args[i] = t.unsqueeze(0) if draw(st.booleans()) or t.dim() < 2 else t.flatten(0, 1)
            elif kind == "integer dtype":
                args[i] = torch.ones(t.shape, dtype=draw(st.sampled_from([torch.int64, torch.int32, torch.bool])))
            elif kind == "other float dtype":
                args[i] = t.to(torch.float64 if t.dtype == torch.float32 else torch.float32)
            elif kind == "not a tensor":
                args[i] = draw(st.sampled_from([[1.0], "x", 3.0, 2]))
            else:
                args[i] = torch.empty(t.shape, dtype=t.dtype, device="meta")
                if len(tensor_positions) < 2:  # one tensor on the meta device is fine (fake kernels)
                    return draw(bad_arguments(family))
        return name, tuple(args), names[i], reaches_cpp
    i = draw(st.sampled_from(int_args))
    arg = names[i]
    if kind == "bad value":
        if arg == "shift_size":
            args[i] = draw(st.sampled_from([-1, args[2], args[2] + 3, 2**62]))  # outside [0, window_size)
        elif arg in BAD_INTS:
            args[i] = draw(st.sampled_from(BAD_INTS[arg]))
        else:
            return draw(bad_arguments(family))
    elif kind == "bad type":
        if arg not in BAD_TYPES:
            return draw(bad_arguments(family))
        args[i] = draw(st.sampled_from(BAD_TYPES[arg]))
    else:
        if arg == "scale":
            return draw(bad_arguments(family))
        args[i] = draw(st.sampled_from(TOO_BIG))
    return name, tuple(args), arg, reaches_cpp


# The start of a message raised inside ATen or Python rather than by attnkern's checks.
FOREIGN = re.compile(r"^(?!\w+: )|Expected a value of type|not implemented for|negative dimension|object is not")


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_arguments_name_the_argument(family):
    @seed(SEED)
    @SETTINGS
    @given(bad_arguments(family))
    def run(case):
        name, args, arg, reaches_cpp = case
        with pytest.raises((ValueError, TypeError)) as info:
            OPS[name].fn(*args)
        message = str(info.value)
        assert message.startswith(f"{name}: ") and not FOREIGN.search(message), message
        assert re.search(rf"\b{arg}\b", message), f"{arg!r} not named in: {message}"
        if reaches_cpp:
            assert raise_same_error(name, args, type(info.value)) == message

    run()


# ---- NaN and inf: the documented rules, one example each --------------------------------------


def test_argmax_picks_the_nan_region_and_amax_lets_nan_win():
    outputs_ = torch.randn(1, 3, 2, 1, 2, dtype=torch.float64)
    guide = torch.tensor([[[[0.0, 9.0]], [[math.nan, 1.0]], [[math.inf, math.nan]]]], dtype=torch.float64)
    # pixel 0: NaN (region 1) beats +inf (region 2); pixel 1: NaN in region 2 beats 9.0 in region 0
    out = OPS["region_assign"].fn(outputs_, guide)
    assert torch.equal(out[0, :, 0, 0], outputs_[0, 1, :, 0, 0]) and torch.equal(out[0, :, 0, 1], outputs_[0, 2, :, 0, 1])
    assert torch.equal(out, OPS["region_assign"].ref(outputs_, guide))
    x = torch.tensor([[[[1.0, math.nan], [math.inf, 2.0]], [[1.0, -math.inf], [3.0, 2.0]]]])
    mean, mx = OPS["channel_pool"].fn(x)
    assert math.isnan(mean[0, 0]) and math.isnan(mx[0, 0])  # a NaN wins the max and spoils the mean
    assert mean[0, 1] == -math.inf and mx[0, 1] == 3.0  # ±inf are numbers: −inf loses the max
    pooled = OPS["spatial_pool"].fn(x)
    assert math.isnan(pooled[0, 1, 0, 1]) and pooled[0, 1, 1, 0] == math.inf


def test_gradient_where_the_reference_is_nan():
    """The max of a channel holding a NaN is NaN, and a gradient reaching it makes the whole channel's
    gradient NaN, as torch.amax's; a zero gradient reaching it passes nothing (the mean's share only)."""
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    x[0, 0, 1, 1] = math.nan
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.autograd.backward(OPS["channel_pool"].fn(mine), [torch.ones(1, 2, dtype=torch.float64)] * 2)
    torch.autograd.backward(OPS["channel_pool"].ref(ref), [torch.ones(1, 2, dtype=torch.float64)] * 2)
    assert torch.isnan(ref.grad[0, 0]).all() and torch.isnan(mine.grad[0, 0]).all()
    quiet = x.clone().requires_grad_()
    grad_max = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    torch.autograd.backward(OPS["channel_pool"].fn(quiet), [torch.ones(1, 2, dtype=torch.float64), grad_max])
    assert torch.equal(quiet.grad[0, 0], torch.full((3, 3), 1 / 9, dtype=torch.float64))
    torch.testing.assert_close(mine.grad[0, 1], ref.grad[0, 1])
