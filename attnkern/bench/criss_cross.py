"""criss_cross family: CCNet's criss-cross attention layer (1×1 projections, attention, gamma·out + x).

Implementations, all with the same weights (gamma = 0.5, so the attention counts):
  seed             CCNet's published formulation: permute/contiguous copies of q, k, v per
                   direction, bmm energies with a −inf diagonal, concatenated softmax, bmm outputs
  einsum           the einsum formulation (what mmcv switched to): attnkern.ops._plain's (energies and
                   softmax in float32 for bfloat16 inputs)
  einsum, compiled the einsum layer under torch.compile (inductor)
  attnkern         attnkern.nn.CrissCrossAttention (the criss_cross_attention op: on the CPU its fused
                   kernel; on CUDA batched cuBLAS products around its softmax kernel)
"""

import torch
from torch import nn

import attnkern
from attnkern.ops._plain import criss_cross_attention as einsum_attention

from .case import Case, bench_dtypes, random_inputs

SHAPES = [  # (label, B, C, H, W)
    ("CCNet head 2×512×97×97", 2, 512, 97, 97),
    ("YOLO P5 8×1024×20×20", 8, 1024, 20, 20),
    ("1×256×64×64", 1, 256, 64, 64),
]
SMOKE_SHAPES = [("smoke 2×16×5×7", 2, 16, 5, 7)]


def seed_attention(q, k, v):
    B, _, H, W = q.shape
    q_h = q.permute(0, 3, 1, 2).contiguous().view(B * W, -1, H).permute(0, 2, 1)
    q_w = q.permute(0, 2, 1, 3).contiguous().view(B * H, -1, W).permute(0, 2, 1)
    k_h = k.permute(0, 3, 1, 2).contiguous().view(B * W, -1, H)
    k_w = k.permute(0, 2, 1, 3).contiguous().view(B * H, -1, W)
    v_h = v.permute(0, 3, 1, 2).contiguous().view(B * W, -1, H)
    v_w = v.permute(0, 2, 1, 3).contiguous().view(B * H, -1, W)
    diagonal = torch.diag(torch.full((H,), float("-inf"), device=q.device, dtype=q.dtype)).unsqueeze(0)
    energy_h = (torch.bmm(q_h, k_h) + diagonal).view(B, W, H, H).permute(0, 2, 1, 3)
    energy_w = torch.bmm(q_w, k_w).view(B, H, W, W)
    attention = torch.cat([energy_h, energy_w], 3).softmax(dim=3)
    att_h = attention[:, :, :, :H].permute(0, 2, 1, 3).contiguous().view(B * W, H, H)
    att_w = attention[:, :, :, H:].contiguous().view(B * H, W, W)
    out_h = torch.bmm(v_h, att_h.permute(0, 2, 1)).view(B, W, -1, H).permute(0, 2, 3, 1)
    out_w = torch.bmm(v_w, att_w.permute(0, 2, 1)).view(B, H, -1, W).permute(0, 2, 1, 3)
    return out_h + out_w


class FormulationLayer(nn.Module):
    """The criss-cross layer with a given attention formulation (parameters as attnkern's)."""

    def __init__(self, layer: attnkern.nn.CrissCrossAttention, attention):
        super().__init__()
        self.layer, self.attention = layer, attention

    def forward(self, x):
        m = self.layer
        return m.gamma * self.attention(m.query_conv(x), m.key_conv(x), m.value_conv(x)) + x


def cases(device, smoke):
    for label, b, c, h, w in SMOKE_SHAPES if smoke else SHAPES:
        for dtype in bench_dtypes(device):
            layer = attnkern.nn.CrissCrossAttention(c).to(device=device, dtype=dtype)
            with torch.no_grad():
                layer.gamma.fill_(0.5)
            einsum_layer = FormulationLayer(layer, einsum_attention)

            yield Case(
                family="criss-cross layer",
                shape=label,
                dtype=dtype,
                make_inputs=random_inputs((b, c, h, w), device=device, dtype=dtype),
                impls={
                    "seed": FormulationLayer(layer, seed_attention),
                    "einsum": einsum_layer,
                    "einsum, torch.compile": torch.compile(einsum_layer, dynamic=False),
                    "attnkern": layer,
                },
            )
