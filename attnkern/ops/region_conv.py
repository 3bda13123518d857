"""Dynamic region-aware convolution ops (DRConv)."""

import torch
from torch import Tensor

from .. import reference
from ._kernels import check_floating, has_kernel

__all__ = ["region_assign"]


def region_assign(outputs: Tensor, guide: Tensor) -> Tensor:
    """Per pixel, the output of the region its guide selects (DRConv's ``asign_index``).

    Args:
        outputs: [B, r, C, H, W], the candidate outputs of the r regions.
        guide: [B, r, H, W]; pixel (h, w) takes region argmax_r guide[b, r, h, w] (ties: the first, as
            ``torch.argmax``).

    Returns:
        [B, C, H, W]. Gradients follow DRConv's straight-through rule: ``outputs`` receives the
        incoming gradient at the selected region only, ``guide`` receives s ⊙ (G − Σ_r s·G) with
        s = softmax(guide, dim=1) and G_r = Σ_c grad·outputs_r.
    """
    op = "region_assign"
    check_floating(outputs, "outputs", op)
    check_floating(guide, "guide", op)
    if outputs.dim() != 5 or guide.dim() != 4:
        raise ValueError(f"{op}: outputs must be [B, r, C, H, W] and guide [B, r, H, W], got shapes "
                         f"{tuple(outputs.shape)} and {tuple(guide.shape)}")
    b, r, _, h, w = outputs.shape
    if tuple(guide.shape) != (b, r, h, w):
        raise ValueError(f"{op}: guide must be [B, r, H, W] = [{b}, {r}, {h}, {w}] for outputs of shape "
                         f"{tuple(outputs.shape)}, got {tuple(guide.shape)}")
    if r == 0:
        raise ValueError(f"{op}: needs at least one region, got r = 0")
    if outputs.dtype != guide.dtype or outputs.device != guide.device:
        raise TypeError(f"{op}: outputs and guide must share dtype and device, got {outputs.dtype} on "
                        f"{outputs.device} and {guide.dtype} on {guide.device}")
    if not has_kernel(outputs):
        return reference.region_assign(outputs, guide)
    return torch.ops.attnkern.region_assign(outputs, guide)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _region_assign_backward(ctx, grad):
    outputs, guide = ctx.saved_tensors
    return torch.ops.attnkern.region_assign_backward(grad, outputs, guide)


torch.library.register_autograd("attnkern::region_assign", _region_assign_backward, setup_context=_save_inputs)


@torch.library.register_fake("attnkern::region_assign")
def _region_assign_fake(outputs, guide):
    b, _, c, h, w = outputs.shape
    return outputs.new_empty(b, c, h, w)


@torch.library.register_fake("attnkern::region_assign_backward")
def _region_assign_backward_fake(grad, outputs, guide):
    return outputs.new_empty(outputs.shape), guide.new_empty(guide.shape)
