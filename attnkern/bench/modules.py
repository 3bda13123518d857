"""Seed-002 plug-in layers at YOLO-neck shapes: A2 double attention, SK, SGE, scSE, SCConv, split
attention (SE and CBAM, on the gating kernels, are in attnkern.bench.gating).

Implementations, all with the same weights (training mode, as in a training step):
  seed              the published formulation (attnkern.reference.modules.Seed*); for A2 the
                    published code as users run it, softmax over the batch included (labelled)
  seed, compiled    the same under torch.compile (inductor)
  attnkern          the attnkern.nn layer (plain PyTorch: the paper's softmax for A2, no stacking
                    copies for SK and SplitAttn)

The convolution-heavy layers use grouped convolutions (SK G = 32, SCConv groups = 32, SplitAttn
groups = 8) so that the attention part, where the implementations differ, is not lost under the
convolutions they share.
"""

from torch import nn

import attnkern
from attnkern.reference import modules as seeds

from .case import layer_cases

SHAPES = [(8, 256, 40, 40), (8, 512, 20, 20)]  # YOLO neck P3 / P4 feature maps
SMOKE_SHAPES = [(2, 64, 5, 7)]  # channels: a multiple of SGE's 64 groups

A2_SEED = "seed (published: softmax over the batch)"


def layers(c):
    """(family, seed module, attnkern module, seed's impl name) for c channels."""
    return [
        ("DoubleAttention layer", seeds.SeedDoubleAttention(c, c // 4, c // 4),
         attnkern.nn.DoubleAttention(c, c // 4, c // 4), A2_SEED),
        ("scSE layer", seeds.SeedscSE(c), attnkern.nn.scSE(c), "seed"),
        ("SGE layer", seeds.SeedSGE(64), attnkern.nn.SGE(64), "seed"),
        ("SKConv layer", seeds.SeedSKConv(c, M=2, G=32, r=16), attnkern.nn.SKConv(c, M=2, G=32, r=16), "seed"),
        ("SCConv layer", seeds.SeedSCConv(c, c, 1, 1, 1, 32, 4, nn.BatchNorm2d),
         attnkern.nn.SCConv(c, c, 1, 1, 1, 32, 4, nn.BatchNorm2d), "seed"),
        ("SplitAttn layer", seeds.SeedSplitAttn(c, groups=8, norm_layer=nn.BatchNorm2d),
         attnkern.nn.SplitAttn(c, groups=8, norm_layer=nn.BatchNorm2d), "seed"),
    ]


def cases(device, smoke):
    return layer_cases(layers, SMOKE_SHAPES if smoke else SHAPES, device)
