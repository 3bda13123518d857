"""References of the region_conv family (DRConv)."""

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair


def _select_regions(outputs: Tensor, guide: Tensor) -> Tensor:
    """outputs [B, r, C, H, W] at each pixel's argmax region of guide [B, r, H, W] → [B, C, H, W]."""
    index = guide.argmax(dim=1, keepdim=True).unsqueeze(2)  # [B, 1, 1, H, W]
    return outputs.gather(1, index.expand(-1, -1, outputs.shape[2], -1, -1)).squeeze(1)


class _RegionAssign(torch.autograd.Function):
    """DRConv's ``asign_index``: a gather in the forward, the straight-through rule in the backward."""

    @staticmethod
    def forward(outputs: Tensor, guide: Tensor) -> Tensor:
        return _select_regions(outputs, guide)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        outputs, guide = ctx.saved_tensors
        index = guide.argmax(dim=1, keepdim=True).unsqueeze(2).expand(-1, -1, outputs.shape[2], -1, -1)
        grad_outputs = torch.zeros_like(outputs).scatter_(1, index, grad.unsqueeze(1))
        s = guide.softmax(dim=1)
        response = (grad.unsqueeze(1) * outputs).sum(dim=2)  # G_r = Σ_c grad·outputs_r, [B, r, H, W]
        grad_guide = s * (response - (s * response).sum(dim=1, keepdim=True))
        return grad_outputs, grad_guide


def region_assign(outputs: Tensor, guide: Tensor) -> Tensor:
    """DRConv's ``asign_index``: outputs [B, r, C, H, W], guide [B, r, H, W] → [B, C, H, W], each pixel
    taking the output of the region its guide selects (``torch.argmax`` over r: the first maximum, a NaN
    being the maximum).

    Gradients follow DRConv's straight-through rule: outputs get the incoming gradient at the selected
    region only; the guide gets the softmax Jacobian s ⊙ (G − Σ s·G), s = softmax(guide, 1),
    G_r = Σ_c grad·outputs_r. As in DRConv, an autograd Function: the forward is the gather itself, so
    a non-finite guide or output selects as argmax says (the straight-through product
    outputs·(onehot + s − s.detach()) would turn it into NaN). Under torch.jit tracing (TorchScript
    export, which cannot hold a Python autograd Function) the gather alone is recorded.
    """
    if torch.jit.is_tracing():
        return _select_regions(outputs, guide)
    return _RegionAssign.apply(outputs, guide)


def region_correlation(x: Tensor, filters: Tensor, stride=1, padding=0, dilation=1) -> Tensor:
    """Every region's convolution of each sample with its own filters, as DRConv's ``xcorr_fast``
    computes it: x [B, Cin, H, W], filters [B, r, Cout, Cin, kh, kw] → [B, r, Cout, H', W']."""
    B, R, C_out, C_in, kh, kw = filters.shape
    if B == 0 or C_out == 0:  # conv2d's grouped form needs B·R·Cout ≥ B filters: the response is empty
        size = [(x.shape[2 + i] + 2 * p - d * (k - 1) - 1) // s + 1
                for i, (k, s, p, d) in enumerate(zip((kh, kw), _pair(stride), _pair(padding), _pair(dilation)))]
        # Empty, and still a function of x and filters, so that their gradients are zeros of their shapes.
        return x.new_zeros(B, R, C_out, *size) + (x.sum() + filters.sum()) * 0
    out = torch.nn.functional.conv2d(x.reshape(1, B * C_in, *x.shape[2:]), filters.reshape(B * R * C_out, C_in, kh, kw),
                                     stride=stride, padding=padding, dilation=dilation, groups=B)
    return out.view(B, R, C_out, *out.shape[2:])


def dynamic_region_conv(x: Tensor, filters: Tensor, guide: Tensor, stride=1, padding=0, dilation=1) -> Tensor:
    """DRConv's composition: every region's convolution, then region_assign by the guide (r× the
    work and memory of the convolution it stands for)."""
    return region_assign(region_correlation(x, filters, stride, padding, dilation), guide)
