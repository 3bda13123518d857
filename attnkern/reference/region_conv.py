"""References of the region_conv family (DRConv)."""

import torch
from torch import Tensor


def region_assign(outputs: Tensor, guide: Tensor) -> Tensor:
    """DRConv's ``asign_index``: outputs [B, r, C, H, W], guide [B, r, H, W] → [B, C, H, W], each pixel
    taking the output of the region its guide selects (argmax over r).

    Gradients follow DRConv's straight-through rule: outputs get the incoming gradient at the selected
    region only; the guide gets the softmax Jacobian s ⊙ (G − Σ s·G), s = softmax(guide, 1),
    G_r = Σ_c grad·outputs_r. Written so that autograd produces exactly that: the factor
    (s − s.detach()) is zero in value and carries the softmax gradient.
    """
    selected = torch.zeros_like(guide).scatter_(1, guide.argmax(dim=1, keepdim=True), 1)
    s = guide.softmax(dim=1)
    return (outputs * (selected + (s - s.detach())).unsqueeze(2)).sum(dim=1)


def region_correlation(x: Tensor, filters: Tensor, stride=1, padding=0, dilation=1) -> Tensor:
    """Every region's convolution of each sample with its own filters, as DRConv's ``xcorr_fast``
    computes it: x [B, Cin, H, W], filters [B, r, Cout, Cin, kh, kw] → [B, r, Cout, H', W']."""
    B, R, C_out, C_in, kh, kw = filters.shape
    if B == 0:  # conv2d refuses groups = 0: convolve one sample of zeros for the size, keep none of it
        one_x, one_filters = x.new_zeros(1, *x.shape[1:]), filters.new_zeros(1, *filters.shape[1:])
        return region_correlation(torch.cat([x, one_x]), torch.cat([filters, one_filters]), stride, padding, dilation)[:0]
    out = torch.nn.functional.conv2d(x.reshape(1, B * C_in, *x.shape[2:]), filters.reshape(B * R * C_out, C_in, kh, kw),
                                     stride=stride, padding=padding, dilation=dilation, groups=B)
    return out.view(B, R, C_out, *out.shape[2:])


def dynamic_region_conv(x: Tensor, filters: Tensor, guide: Tensor, stride=1, padding=0, dilation=1) -> Tensor:
    """DRConv's composition: every region's convolution, then region_assign by the guide (r× the
    work and memory of the convolution it stands for)."""
    return region_assign(region_correlation(x, filters, stride, padding, dilation), guide)
