"""Empty tensors (issue 14): every op, forward and backward, with each dimension 0 in turn, equals its
reference — or, where the op has no answer (nothing to pool, no region, no kernel tap, no head),
attnkern.ops, torch.ops.attnkern, the check op and the reference path raise the same ValueError."""

import pytest
import torch

from specs import OPS, outputs, raise_same_error

D = torch.float64


def _r(*shape):
    return torch.randn(*shape, dtype=D)


def _spd(B, C):
    a = _r(B, C, C)
    return a @ a.mT + torch.eye(C, dtype=D)


def _conv_args(B, Cin, H, W, r, Cout, kh, kw):
    pad = 1
    Ho, Wo = H + 2 * pad - kh + 1, W + 2 * pad - kw + 1
    return _r(B, Cin, H, W), _r(B, r, Cout, Cin, kh, kw), _r(B, r, max(Ho, 0), max(Wo, 0)), 1, pad


# name: (op, base sizes, arguments from sizes, {dim: the ValueError's message when that dim is 0})
CASES = {
    "covpool": ("covpool", dict(B=2, C=3, H=2, W=3), lambda s: (_r(s["B"], s["C"], s["H"], s["W"]),),
                dict(H="at least one position", W="at least one position")),
    "covpool [B, C, M]": ("covpool", dict(B=2, C=3, M=4), lambda s: (_r(s["B"], s["C"], s["M"]),),
                          dict(M="at least one position")),
    "sqrtm_newton_schulz": ("sqrtm_newton_schulz", dict(B=2, C=3), lambda s: (_spd(s["B"], s["C"]), 4), {}),
    "triuvec": ("triuvec", dict(B=2, C=3), lambda s: (_r(s["B"], s["C"], s["C"]),), {}),
    "criss_cross_affinity": ("criss_cross_affinity", dict(B=2, C=3, H=4, W=5),
                             lambda s: (_r(s["B"], s["C"], s["H"], s["W"]), _r(s["B"], s["C"], s["H"], s["W"])), {}),
    "criss_cross_aggregate": ("criss_cross_aggregate", dict(B=2, C=3, H=4, W=5),
                              lambda s: (_r(s["B"], s["H"] + s["W"] - 1, s["H"], s["W"]).softmax(1),
                                         _r(s["B"], s["C"], s["H"], s["W"])), {}),
    "criss_cross_attention": ("criss_cross_attention", dict(B=2, C=3, Cv=2, H=4, W=5),
                              lambda s: (_r(s["B"], s["C"], s["H"], s["W"]), _r(s["B"], s["C"], s["H"], s["W"]),
                                         _r(s["B"], s["Cv"], s["H"], s["W"])), {}),
    "region_assign": ("region_assign", dict(B=2, r=3, C=4, H=3, W=5),
                      lambda s: (_r(s["B"], s["r"], s["C"], s["H"], s["W"]), _r(s["B"], s["r"], s["H"], s["W"])),
                      dict(r="at least one region")),
    "dynamic_region_conv": ("dynamic_region_conv", dict(B=2, Cin=3, H=5, W=6, r=2, Cout=4, kh=3, kw=2),
                            lambda s: _conv_args(**s),
                            dict(Cin="at least one input channel and pixel", H="at least one input channel and pixel",
                                 W="at least one input channel and pixel", r="at least one region",
                                 kh="a kernel of at least 1x1", kw="a kernel of at least 1x1")),
    "channel_pool": ("channel_pool", dict(B=2, C=3, H=4, W=5), lambda s: (_r(s["B"], s["C"], s["H"], s["W"]),),
                     dict(H="at least one position", W="at least one position")),
    "spatial_pool": ("spatial_pool", dict(B=2, C=3, H=4, W=5),
                     lambda s: (_r(s["B"], s["C"], s["H"], s["W"]), _r(s["B"], s["C"])), dict(C="at least one channel")),
    "spatial_pool without gate": ("spatial_pool", dict(B=2, C=3, H=4, W=5),
                                  lambda s: (_r(s["B"], s["C"], s["H"], s["W"]), None), dict(C="at least one channel")),
    **{f"apply_gates {gates}": ("apply_gates", dict(B=2, C=3, H=4, W=5),
                                lambda s, gates=gates: (_r(s["B"], s["C"], s["H"], s["W"]),
                                                        _r(s["B"], s["C"]) if gates != "pixel" else None,
                                                        _r(s["B"], 1, s["H"], s["W"]) if gates != "channel" else None), {})
       for gates in ("channel", "pixel", "both")},
    "group_enhance": ("group_enhance", dict(B=2, G=2, Cg=3, H=4, W=5),
                      lambda s: (_r(s["B"], s["G"] * s["Cg"], s["H"], s["W"]), _r(max(s["G"], 1)),
                                 _r(max(s["G"], 1)), max(s["G"], 1)), {}),
    "window_attention": ("window_attention", dict(B=2, H=4, W=6, heads=2, d=3),
                         lambda s: (_r(s["B"], s["H"], s["W"], 3, s["heads"], s["d"]), _r(s["heads"], 4, 4), 2, 1, None,
                                    0.7),
                         dict(heads=r"at least one head \(heads >= 1\)", d=r"at least one channel \(d >= 1\)")),
}

PARAMS = [(case, dim) for case, (_, sizes, _, _) in CASES.items() for dim in sizes]


def _run(fn, args, grad_positions, seed):
    """fn's outputs and the gradients of the tensors at grad_positions for random output gradients
    (zeros where a tensor is not used)."""
    leaves = [a.clone().requires_grad_() if i in grad_positions and isinstance(a, torch.Tensor) else a
              for i, a in enumerate(args)]
    outs = outputs(fn(*leaves))
    generator = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, dtype=o.dtype, generator=generator) for o in outs]
    wrt = [leaves[i] for i in grad_positions if isinstance(leaves[i], torch.Tensor)]
    got = torch.autograd.grad(outs, wrt, grads, allow_unused=True)
    return outs, [torch.zeros_like(w) if g is None else g for g, w in zip(got, wrt)]


@pytest.mark.parametrize("case,dim", PARAMS, ids=[f"{c}-{d}=0" for c, d in PARAMS])
def test_each_dimension_empty(case, dim):
    name, sizes, make, errors = CASES[case]
    args = make({**sizes, dim: 0})
    if dim in errors:
        raise_same_error(name, args, ValueError, errors[dim])
        return
    op = OPS[name]
    outs, grads = _run(op.fn, args, op.grads, seed=len(case))
    expected_outs, expected_grads = _run(op.ref, args, op.grads, seed=len(case))
    assert any(t.numel() == 0 for t in args if isinstance(t, torch.Tensor))
    for got, expected in zip(outs + tuple(grads), expected_outs + tuple(expected_grads)):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
