"""window_attention family: the attention branch of a Swin/SwinIR block (qkv Linear → shifted-window
attention with relative position bias → proj Linear), and the SwinIR-light network.

Implementations of the branch, all with the same weights (x [B, H·W, C] in, [B, H·W, C] out):
  seed               SwinIR's formulation: roll, window_partition copy, qkv Linear, q·kᵀ, bias gather,
                     mask add, softmax, ·v, proj, window_reverse copy, roll back
  SDPA               the same partition, attention through F.scaled_dot_product_attention with the
                     bias + mask materialised as a [B·nW, heads, N, N] attn_mask
  seed, compiled     the seed formulation under torch.compile (inductor)
  attnkern           qkv Linear on the image, attnkern.ops.window_attention, proj Linear: no copies (on
                     CUDA the op runs as the routing table says, attnkern.ops._cuda_routing: SDPA)
  attnkern kernels   (CUDA) the same with the hand-written kernel (attnkern.ops.cuda_kernels("always"))
The network rows run attnkern.models.SwinIR (lightweight ×2) forward on 128×128 and 256×256 images,
fused against the same network on the reference path (forward only), and the same network exported to
ONNX (standard operators) run by ONNX Runtime on the CPU, where onnxruntime is installed — the runtime
a CPU user would deploy with.
On the CPU this family is measured on every CPU capability the machine runs (attnkern.bench).
"""

import torch
import torch.nn.functional as F
from torch import nn

from attnkern import ops, reference

from .case import Case, bench_dtypes, onnxruntime_row, random_inputs, with_kernels_row

SHAPES = [  # (label, B, H, W, C, heads, window, shift)
    ("SwinIR-light 4×64×64 C60 h6 w8 s4", 4, 64, 64, 60, 6, 8, 4),
    ("SwinIR classical 2×64×64 C180 h6 w8", 2, 64, 64, 180, 6, 8, 0),
    ("Swin-T stage 1 32×56×56 C96 h3 w7 s3", 32, 56, 56, 96, 3, 7, 3),
]
SMOKE_SHAPES = [("smoke 2×8×12 C8 h2 w4 s2", 2, 8, 12, 8, 2, 4, 2)]


class AttentionBranch(nn.Module):
    """The parameters of one block's attention branch (SwinIR's names)."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, H: int, W: int):
        super().__init__()
        self.heads, self.window, self.shift, self.H, self.W = heads, window, shift, H, W
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(0.02 * torch.randn((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", reference.relative_position_index(window))
        self.register_buffer("attn_mask", reference.shift_region_mask(H, W, window, shift) if shift else None)

    def bias(self) -> torch.Tensor:
        N = self.window ** 2
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)


def seed_branch(m: AttentionBranch, x: torch.Tensor, use_sdpa: bool = False) -> torch.Tensor:
    B, L, C = x.shape
    ws, N, heads = m.window, m.window ** 2, m.heads
    x = x.view(B, m.H, m.W, C)
    if m.shift:
        x = torch.roll(x, shifts=(-m.shift, -m.shift), dims=(1, 2))
    windows = reference.window_partition(x, ws)  # [B·nW, N, C]
    qkv = m.qkv(windows).reshape(-1, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    bias = m.bias().unsqueeze(0)
    if use_sdpa:
        attn_mask = bias.expand(q.shape[0], -1, -1, -1)
        if m.attn_mask is not None:
            nW = m.attn_mask.shape[0]
            attn_mask = (attn_mask.view(B, nW, heads, N, N) + m.attn_mask[None, :, None]).view(-1, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))
    else:
        attn = (q * (C // heads) ** -0.5) @ k.transpose(-2, -1) + bias
        if m.attn_mask is not None:
            nW = m.attn_mask.shape[0]
            attn = (attn.view(B, nW, heads, N, N) + m.attn_mask[None, :, None]).view(-1, heads, N, N)
        out = attn.softmax(dim=-1) @ v
    out = m.proj(out.transpose(1, 2).reshape(-1, N, C))
    x = reference.window_reverse(out, ws, m.H, m.W)
    if m.shift:
        x = torch.roll(x, shifts=(m.shift, m.shift), dims=(1, 2))
    return x.reshape(B, L, C)


def attnkern_branch(m: AttentionBranch, x: torch.Tensor) -> torch.Tensor:
    B, L, C = x.shape
    qkv = m.qkv(x).view(B, m.H, m.W, 3, m.heads, C // m.heads)
    return m.proj(ops.window_attention(qkv, m.bias(), m.window, m.shift).reshape(B, L, C))


def branch_cases(device, smoke):
    for label, b, h, w, c, heads, window, shift in SMOKE_SHAPES if smoke else SHAPES:
        for dtype in bench_dtypes(device):
            m = AttentionBranch(c, heads, window, shift, h, w).to(device=device, dtype=dtype)

            def seed(x, m=m):
                return seed_branch(m, x)

            yield Case(
                family="window attention branch",
                shape=label,
                dtype=dtype,
                make_inputs=random_inputs((b, h * w, c), device=device, dtype=dtype),
                impls=with_kernels_row({
                    "seed": seed,
                    "SDPA": lambda x, m=m: seed_branch(m, x, use_sdpa=True),
                    "seed, torch.compile": torch.compile(seed, dynamic=False),
                    "attnkern": lambda x, m=m: attnkern_branch(m, x),
                }, device),
            )


def network_cases(device, smoke):
    from attnkern.models import SwinIR
    from attnkern.nn.swin import set_fused_attention

    if smoke:
        config = dict(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2,
                      upsampler="pixelshuffledirect")
        sizes = [("smoke SwinIR ×2 12×12", 12)]
    else:  # SwinIR lightweight ×2, as the official main_test_swinir.py builds it
        config = dict(upscale=2, img_size=64, window_size=8, img_range=1.0, embed_dim=60, depths=[6, 6, 6, 6],
                      num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler="pixelshuffledirect", resi_connection="1conv")
        sizes = [(f"SwinIR-light ×2 1×3×{side}×{side}", side) for side in (128, 256)]
    fused = SwinIR(**config).to(device).eval()
    reference_path = SwinIR(**config).to(device).eval()
    reference_path.load_state_dict(fused.state_dict())
    set_fused_attention(reference_path, False)

    ort_impls, ort_skip, ort_notes = onnxruntime_row(fused, torch.rand(1, 3, sizes[0][1], sizes[0][1]), device)
    for label, side in sizes:
        def make_inputs(side=side):
            return (torch.rand(1, 3, side, side, device=device),)

        yield Case(family="SwinIR network", shape=label, dtype=torch.float32, make_inputs=make_inputs,
                   impls=with_kernels_row({"reference path": reference_path, "attnkern": fused, **ort_impls}, device),
                   skip=ort_skip,
                   notes=ort_notes, forward_only=True)


def cases(device, smoke):
    yield from branch_cases(device, smoke)
    yield from network_cases(device, smoke)
