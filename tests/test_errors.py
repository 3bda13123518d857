"""Bad input never crashes or lies (issue 14): every bad argument is a ValueError/TypeError naming it,
the same from attnkern.ops, from torch.ops.attnkern and on the reference path; sizes that overflow
int64 are errors, not wrong answers; the crash and the uninitialised gradient of empty inputs stay fixed."""

import pytest
import torch

from attnkern import ops, reference
from specs import raise_same_error

r = torch.randn
_x = r(2, 3, 4, 5)
_qkv = r(1, 8, 8, 3, 2, 4)
_conv = (r(2, 3, 6, 6), r(2, 4, 5, 3, 3, 3), r(2, 4, 4, 4))
_huge = torch.empty(0, 1, 1, 1).expand(0, 2**40, 2**40, 2**40)  # no elements, sizes whose product overflows

# (op, args, exception, message): the message names the argument, what was expected and what was received.
BAD_ARGUMENTS = [
    # covpool family
    ("covpool", (r(2, 3, 0),), ValueError, r"covpool: x needs at least one position \(M = H·W > 0\), got shape \[2, 3, 0\]"),
    ("covpool", (r(2, 3, 4).long(),), TypeError, "covpool: x: expected a floating-point tensor, got Long"),
    ("covpool", (_huge[:, :, :, 0],), ValueError, r"covpool: x: expected sizes whose product fits in int64"),
    ("sqrtm_newton_schulz", (r(2, 3, 3), 0), ValueError, r"sqrtm_newton_schulz: iters must be in \[1, 1000\], got 0"),
    ("sqrtm_newton_schulz", (r(2, 3, 3), 2**40), ValueError, r"iters must be in \[1, 1000\], got 1099511627776"),
    ("sqrtm_newton_schulz", (r(2, 3, 3), 2**62), ValueError, r"iters must be in \[1, 1000\], got 4611686018427387904"),
    ("sqrtm_newton_schulz", (r(2, 3, 4), 5), ValueError, r"a: expected a batch of square matrices \[B, C, C\], got shape \[2, 3, 4\]"),
    ("triuvec", (r(3, 3),), ValueError, r"triuvec: a: expected a 3-D tensor \[B, C, C\], got shape \[3, 3\]"),
    ("triuvec", (torch.empty(1, 1, 1).expand(0, 2**32, 2**32),), ValueError,
     r"triuvec: a: expected sizes whose product fits in int64, got shape \[0, 4294967296, 4294967296\]"),
    # criss_cross family
    ("criss_cross_affinity", (r(1, 2, 0, 0), r(1, 2, 0, 0)), ValueError,
     r"criss_cross_affinity: q: H and W cannot both be 0 \(each pixel has H \+ W - 1 positions\), got shape \[1, 2, 0, 0\]"),
    ("criss_cross_aggregate", (r(1, 0, 0, 0), r(1, 2, 0, 0)), ValueError, "criss_cross_aggregate: v: H and W cannot both be 0"),
    ("criss_cross_attention", (r(1, 2, 0, 0), r(1, 2, 0, 0), r(1, 3, 0, 0)), ValueError,
     "criss_cross_attention: q: H and W cannot both be 0"),
    ("criss_cross_attention", (r(1, 2, 3, 3), r(1, 2, 3, 3).double(), r(1, 3, 3, 3)), TypeError,
     "criss_cross_attention: q and k must have the same dtype, got Float and Double"),
    ("criss_cross_affinity", (_huge, _huge), ValueError, "q: expected sizes whose product fits in int64"),
    # region_conv family
    ("region_assign", (r(2, 0, 4, 5, 6), r(2, 0, 5, 6)), ValueError,
     r"region_assign: guide needs at least one region \(r >= 1\), got shape \[2, 0, 5, 6\]"),
    ("dynamic_region_conv", (*_conv, 0), ValueError, r"dynamic_region_conv: stride must be >= 1, got \[0, 0\]"),
    ("dynamic_region_conv", (*_conv, -1), ValueError, r"stride must be >= 1, got \[-1, -1\]"),
    ("dynamic_region_conv", (*_conv, 1, -1), ValueError, r"dynamic_region_conv: padding must be >= 0, got \[-1, -1\]"),
    ("dynamic_region_conv", (*_conv, 1, 0, (1, 0)), ValueError, r"dynamic_region_conv: dilation must be >= 1, got \[1, 0\]"),
    ("dynamic_region_conv", (*_conv, 2**62, 2**62), ValueError,
     r"dynamic_region_conv: 2·padding along H = 2 \* 4611686018427387904 does not fit in int64"),
    ("dynamic_region_conv", (*_conv, 1, 0, 2**62), ValueError,
     r"dynamic_region_conv: dilation·\(kh - 1\) along H = 4611686018427387904 \* 2 does not fit in int64"),
    ("dynamic_region_conv", (r(2, 0, 6, 6), r(2, 4, 5, 0, 3, 3), r(2, 4, 4, 4)), ValueError,
     r"x needs at least one input channel and pixel \(Cin, H, W >= 1\), got shape \[2, 0, 6, 6\]"),
    ("dynamic_region_conv", (r(2, 3, 6, 6), r(2, 4, 5, 3, 0, 3), r(2, 4, 7, 4)), ValueError,
     r"filters need a kernel of at least 1x1 \(kh, kw >= 1\), got shape \[2, 4, 5, 3, 0, 3\]"),
    ("dynamic_region_conv", (r(2, 3, 6, 6), r(2, 0, 5, 3, 3, 3), r(2, 0, 4, 4)), ValueError,
     r"filters need at least one region \(r >= 1\)"),
    ("dynamic_region_conv", (r(2, 3, 2, 6), r(2, 4, 5, 3, 3, 3), r(2, 4, 1, 4)), ValueError,
     r"the filters' kernel, dilated \(dilation·\(kh - 1\) \+ 1 = 3\), does not fit x padded \(H \+ 2·padding = 2\) along H"),
    # gating family
    ("channel_pool", (r(2, 3, 0, 5),), ValueError, r"channel_pool: x needs at least one position to pool, got shape \[2, 3, 0, 5\]"),
    ("spatial_pool", (r(2, 0, 4, 5), None), ValueError, "spatial_pool: x needs at least one channel to pool"),
    ("spatial_pool", (_x, r(2, 3).double()), TypeError, "spatial_pool: gate and x must have the same dtype, got Double and Float"),
    ("apply_gates", (_x, None, None), ValueError, "apply_gates: needs a channel_gate, a pixel_gate or both, got neither"),
    ("apply_gates", (_x, r(2, 3), r(2, 1, 5, 4)), ValueError,
     r"apply_gates: pixel_gate: expected shape \[B, 1, H, W\] = \[2, 1, 4, 5\], got \[2, 1, 5, 4\]"),
    ("group_enhance", (r(2, 6, 4, 5), r(4), r(4), 4), ValueError,
     r"group_enhance: x's channels must be divisible by groups = 4, got shape \[2, 6, 4, 5\]"),
    ("group_enhance", (r(2, 6, 4, 5), r(3), r(3), 0), ValueError, "group_enhance: groups must be positive, got 0"),
    ("group_enhance", (r(2, 6, 4, 5), r(1, 3, 1, 1), r(3), 3), ValueError,
     r"group_enhance: weight: expected shape \[G\] = \[3\], got \[1, 3, 1, 1\]"),
    ("group_enhance", (r(2, 6, 4, 5), r(3), r(3).double(), 3), TypeError,
     "group_enhance: bias and x must have the same dtype, got Double and Float"),
    ("group_enhance", (r(6, 4, 5), r(3), r(3), 3), ValueError, r"group_enhance: x: expected a 4-D tensor \[B, C, H, W\], got shape \[6, 4, 5\]"),
    # window_attention
    ("window_attention", (r(1, 4, 4, 3, 2, 0), None, 2), ValueError,
     r"window_attention: qkv must have at least one head \(heads >= 1\) of at least one channel \(d >= 1\), got shape"),
    ("window_attention", (r(1, 4, 4, 3, 0, 2), None, 2), ValueError, r"at least one head \(heads >= 1\)"),
    ("window_attention", (_qkv, None, 0), ValueError, "window_attention: window_size must be >= 1, got 0"),
    ("window_attention", (r(1, 0, 0, 3, 1, 1), None, 2**40), ValueError,
     r"window_attention: window_size 1099511627776: the tokens per window N = 1099511627776 \* 1099511627776 does not fit"),
    ("window_attention", (r(1, 0, 0, 3, 1, 1), None, 2**16), ValueError,
     r"window_attention: window_size 65536: a window's N×N attention matrix = 4294967296 \* 4294967296 does not fit"),
    ("window_attention", (_qkv, None, 4, 4), ValueError, r"shift_size must be in \[0, window_size\) = \[0, 4\), got 4"),
    ("window_attention", (_qkv, r(2, 16, 16).double(), 4), TypeError, "bias and qkv must have the same dtype"),
    ("window_attention", (_qkv, None, 4, 0, r(4, 16, 16).long()), TypeError, "mask: expected a floating-point tensor"),
]


@pytest.mark.parametrize("name,args,exc,match", BAD_ARGUMENTS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_ARGUMENTS)])
def test_one_error_everywhere(name, args, exc, match):
    """attnkern.ops, torch.ops.attnkern and its check op raise the same error, as does the op on the
    reference path (a device without kernels): the checks are written once, in C++."""
    raise_same_error(name, args, exc, match)


# Bad Python arguments that never reach C++ as such (the dispatcher would read a bool as 1 and report
# the others as a RuntimeError about its schema): attnkern.ops rejects them.
PYTHON_ARGUMENTS = [
    (ops.window_attention, (_qkv, None, True), TypeError, "window_attention: window_size must be an int, got bool True"),
    (ops.window_attention, (_qkv, None, 4.0), TypeError, "window_size must be an int, got float 4.0"),
    (ops.window_attention, (_qkv, None, 4, False), TypeError, "shift_size must be an int, got bool"),
    (ops.window_attention, (_qkv, None, 4, 0, None, "a"), TypeError, "window_attention: scale must be a real number, got str 'a'"),
    (ops.window_attention, (_qkv, None, 4, 0, None, True), TypeError, "scale must be a real number, got bool"),
    (ops.window_attention, (_qkv, [1.0], 4), TypeError, "window_attention: bias must be a torch.Tensor or None, got list"),
    (ops.window_attention, (_qkv, None, 2**64), ValueError, "window_size must fit in int64, got 18446744073709551616"),
    (ops.sqrtm_newton_schulz, (r(2, 3, 3), 2**64), ValueError, "sqrtm_newton_schulz: iters must fit in int64"),
    (ops.sqrtm_newton_schulz, (r(2, 3, 3), True), TypeError, "sqrtm_newton_schulz: iters must be an int, got bool"),
    (ops.dynamic_region_conv, (*_conv, 1.0), TypeError, r"dynamic_region_conv: stride must be an int or a pair of ints, got 1\.0"),
    (ops.dynamic_region_conv, (*_conv, (1, True)), TypeError, r"stride must be an int or a pair of ints, got \(1, True\)"),
    (ops.dynamic_region_conv, (*_conv, 1, (0, 0, 0)), TypeError, r"padding must be an int or a pair of ints"),
    (ops.dynamic_region_conv, (*_conv, 1, 0, 2**63), ValueError, "dilation must fit in int64"),
    (ops.dynamic_region_conv, (_conv[0].numpy(), *_conv[1:]), TypeError, "x must be a torch.Tensor, got ndarray"),
    (ops.apply_gates, (_x, "gate"), TypeError, "apply_gates: channel_gate must be a torch.Tensor or None, got str"),
    (ops.covpool, (None,), TypeError, "covpool: x must be a torch.Tensor, got NoneType"),
    (ops.group_enhance, (_x, r(3), r(3), 3.0), TypeError, "group_enhance: groups must be an int, got float 3.0"),
    (ops.group_enhance, (_x, r(3), None, 3), TypeError, "group_enhance: bias must be a torch.Tensor, got NoneType"),
]


@pytest.mark.parametrize("fn,args,exc,match", PYTHON_ARGUMENTS)
def test_python_arguments(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


def test_python_ints_and_reals_of_other_types_are_accepted():
    """numpy integers and floats are ints and reals; a window of 4 as numpy.int64 is a window of 4."""
    import numpy as np

    bias = r(2, 16, 16)
    expected = ops.window_attention(_qkv, bias, 4, 2, scale=0.5)
    assert torch.equal(ops.window_attention(_qkv, bias, np.int64(4), np.int32(2), scale=np.float32(0.5)), expected)
    assert torch.equal(ops.dynamic_region_conv(*_conv, stride=(np.int64(1), 1)), ops.dynamic_region_conv(*_conv))


def test_raw_ops_check_backward_arguments():
    """The backward ops are reachable directly: their arguments are checked (ValueError/TypeError) too."""
    with pytest.raises(ValueError, match="triuvec_backward: n must be >= 0, got -3"):
        torch.ops.attnkern.triuvec_backward(r(2, 3), -3)
    with pytest.raises(ValueError, match=r"triuvec_backward: the length n\(n\+1\)/2 of grad = 4611686018427387904 \*"):
        torch.ops.attnkern.triuvec_backward(r(2, 3), 2**62)
    with pytest.raises(TypeError, match="triuvec_backward: grad: expected a floating-point tensor, got Long"):
        torch.ops.attnkern.triuvec_backward(torch.ones(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"dynamic_region_conv_backward: grad: expected shape \[2, 5, 4, 4\]"):
        torch.ops.attnkern.dynamic_region_conv_backward(r(2, 5, 4, 3), *_conv, [1, 1], [0, 0], [1, 1])
    with pytest.raises(TypeError, match="dynamic_region_conv_backward: grad and x must have the same dtype"):
        torch.ops.attnkern.dynamic_region_conv_backward(r(2, 5, 4, 4).double(), *_conv, [1, 1], [0, 0], [1, 1])
