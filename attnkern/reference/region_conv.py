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
