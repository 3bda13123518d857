"""Every public op with its reference, its registered op and its check op, for the tests that run
all of them (bad arguments, empty tensors, property-based tests).

Each entry calls the three ways in with the public op's arguments: ``fn`` (attnkern.ops), ``raw``
(torch.ops.attnkern.<op>, the arguments mapped to its schema) and ``check`` (torch.ops.attnkern.<op>_check).
"""

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

from attnkern import ops, reference

ak = torch.ops.attnkern


@dataclass(frozen=True)
class Op:
    fn: Callable       # attnkern.ops.<name>
    ref: Callable      # attnkern.reference.<name>
    raw: Callable      # torch.ops.attnkern.<name>, first output
    check: Callable    # torch.ops.attnkern.<name>_check
    grads: Tuple[int, ...]  # the positions of the arguments that take a gradient (when tensors)


def _bcm(x):  # covpool's public op takes [B, C, H, W] too: the registered op takes [B, C, M]
    return x.flatten(2) if x.dim() == 4 else x


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _window_raw(qkv, bias, window_size, shift_size=0, mask=None, scale=None):
    return ak.window_attention(qkv, bias, mask, window_size, shift_size, 1.0 if scale is None else scale)[0]


def _conv_raw(x, filters, guide, stride=1, padding=0, dilation=1):
    return ak.dynamic_region_conv(x, filters, guide, _pair(stride), _pair(padding), _pair(dilation))


def _conv_check(x, filters, guide, stride=1, padding=0, dilation=1):
    return ak.dynamic_region_conv_check(x, filters, guide, _pair(stride), _pair(padding), _pair(dilation))


OPS: Dict[str, Op] = {
    "covpool": Op(ops.covpool, reference.covpool, lambda x: ak.covpool(_bcm(x)), lambda x: ak.covpool_check(_bcm(x)),
                  (0,)),
    "sqrtm_newton_schulz": Op(ops.sqrtm_newton_schulz, reference.sqrtm_newton_schulz,
                              lambda a, iters=5: ak.sqrtm_newton_schulz(a, iters, False)[0],
                              lambda a, iters=5: ak.sqrtm_newton_schulz_check(a, iters), (0,)),
    "triuvec": Op(ops.triuvec, reference.triuvec, ak.triuvec, ak.triuvec_check, (0,)),
    "criss_cross_affinity": Op(ops.criss_cross_affinity, reference.criss_cross_affinity, ak.criss_cross_affinity,
                               ak.criss_cross_affinity_check, (0, 1)),
    "criss_cross_aggregate": Op(ops.criss_cross_aggregate, reference.criss_cross_aggregate, ak.criss_cross_aggregate,
                                ak.criss_cross_aggregate_check, (0, 1)),
    "criss_cross_attention": Op(ops.criss_cross_attention, reference.criss_cross_attention,
                                lambda q, k, v: ak.criss_cross_attention(q, k, v)[0], ak.criss_cross_attention_check,
                                (0, 1, 2)),
    "region_assign": Op(ops.region_assign, reference.region_assign, ak.region_assign, ak.region_assign_check, (0, 1)),
    "dynamic_region_conv": Op(ops.dynamic_region_conv, reference.dynamic_region_conv, _conv_raw, _conv_check,
                              (0, 1, 2)),
    "channel_pool": Op(ops.channel_pool, reference.channel_pool, ak.channel_pool, ak.channel_pool_check, (0,)),
    "spatial_pool": Op(ops.spatial_pool, reference.spatial_pool, lambda x, gate=None: ak.spatial_pool(x, gate),
                       lambda x, gate=None: ak.spatial_pool_check(x, gate), (0, 1)),
    "apply_gates": Op(ops.apply_gates, reference.apply_gates,
                      lambda x, cg=None, pg=None: ak.apply_gates(x, cg, pg),
                      lambda x, cg=None, pg=None: ak.apply_gates_check(x, cg, pg), (0, 1, 2)),
    "group_enhance": Op(ops.group_enhance, reference.group_enhance, ak.group_enhance, ak.group_enhance_check,
                        (0, 1, 2)),
    "window_attention": Op(ops.window_attention, reference.window_attention, _window_raw,
                           lambda qkv, bias, window_size, shift_size=0, mask=None, scale=None:
                           ak.window_attention_check(qkv, bias, mask, window_size, shift_size), (0, 1)),
}


def outputs(result) -> Tuple[torch.Tensor, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def raise_same_error(name: str, args, exc, match=None) -> str:
    """The op raises exc (matching match) and so do its registered op, its check op and the op on the
    reference path (every device without kernels), all with the same message. Returns the message."""
    import pytest

    from attnkern.ops import _kernels

    op = OPS[name]
    with pytest.raises(exc, match=match) as public:
        op.fn(*args)
    message = str(public.value)
    for call in (op.raw, op.check):
        with pytest.raises(exc) as other:
            call(*args)
        assert str(other.value) == message
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_kernels, "KERNEL_DEVICES", frozenset())
        with pytest.raises(exc) as fallback:
            op.fn(*args)
    assert str(fallback.value) == message
    return message
