"""Seed-002 plug-in layers at YOLO-neck shapes: A2 double attention, SE, CBAM, SK, SGE, scSE, SCConv,
split attention.

Implementations, all with the same weights (training mode, as in a training step):
  seed              the published formulation (attnkern.reference.modules.Seed*); for A2 the
                    published code as users run it, softmax over the batch included (labelled)
  seed, compiled    the same under torch.compile (inductor)
  attnkern          the attnkern.nn layer (SE and CBAM on the gating kernels; the others plain
                    PyTorch: the paper's softmax for A2, no stacking copies for SK and SplitAttn)

The convolution-heavy layers use grouped convolutions (SK G = 32, SCConv groups = 32, SplitAttn
groups = 8) so that the attention part, where the implementations differ, is not lost under the
convolutions they share.
"""

import torch
from torch import nn

import attnkern
from attnkern.bench import Case
from attnkern.reference import modules as seeds

SHAPES = [(8, 256, 40, 40), (8, 512, 20, 20)]  # YOLO neck P3 / P4 feature maps
SMOKE_SHAPES = [(2, 64, 5, 7)]  # channels: a multiple of SGE's 64 groups

A2_SEED = "seed (published: softmax over the batch)"


def layers(c):
    """(family, seed module, attnkern module, seed's impl name) for c channels."""
    return [
        ("DoubleAttention layer", seeds.SeedDoubleAttention(c, c // 4, c // 4),
         attnkern.nn.DoubleAttention(c, c // 4, c // 4), A2_SEED),
        ("SEAttention layer", seeds.SeedSEAttention(c, 16), attnkern.nn.SEAttention(c, 16), "seed"),
        ("CBAM layer", seeds.SeedCBAM(c, 16, 7), attnkern.nn.CBAM(c, 16, 7), "seed"),
        ("scSE layer", seeds.SeedscSE(c), attnkern.nn.scSE(c), "seed"),
        ("SGE layer", seeds.SeedSGE(64), attnkern.nn.SGE(64), "seed"),
        ("SKConv layer", seeds.SeedSKConv(c, M=2, G=32, r=16), attnkern.nn.SKConv(c, M=2, G=32, r=16), "seed"),
        ("SCConv layer", seeds.SeedSCConv(c, c, 1, 1, 1, 32, 4, nn.BatchNorm2d),
         attnkern.nn.SCConv(c, c, 1, 1, 1, 32, 4, nn.BatchNorm2d), "seed"),
        ("SplitAttn layer", seeds.SeedSplitAttn(c, groups=8, norm_layer=nn.BatchNorm2d),
         attnkern.nn.SplitAttn(c, groups=8, norm_layer=nn.BatchNorm2d), "seed"),
    ]


def cases(device, smoke):
    dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
    for b, c, h, w in SMOKE_SHAPES if smoke else SHAPES:
        label = f"{b}×{c}×{h}×{w}"
        for dtype in dtypes:
            for family, seed, layer, seed_name in layers(c):
                seed = seed.to(device=device, dtype=dtype)
                layer = layer.to(device=device, dtype=dtype)
                layer.load_state_dict(seed.state_dict())

                def make_inputs(b=b, c=c, h=h, w=w, dtype=dtype):
                    return (torch.randn(b, c, h, w, device=device, dtype=dtype, requires_grad=True),)

                yield Case(
                    family=family,
                    shape=label,
                    dtype=dtype,
                    make_inputs=make_inputs,
                    impls={
                        seed_name: seed,
                        f"{seed_name}, compiled": torch.compile(seed, dynamic=False),
                        "attnkern": layer,
                    },
                )
