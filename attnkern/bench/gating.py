"""gating family: the layers that run on the gating kernels (channel_pool, spatial_pool, apply_gates),
SE and CBAM, at YOLO-neck shapes, against their seed formulations (attnkern.reference.modules) with the
same weights, in training mode.

Implementations:
  seed              the published formulation
  seed, compiled    the same under torch.compile (inductor)
  attnkern          attnkern.nn.SEAttention / CBAM: poolings and gates in one pass each way (their kernels
                    on CUDA too: no gating op is routed, attnkern.ops._cuda_routing)
On the CPU this family is measured on every CPU capability the machine runs (attnkern.bench).
"""

import attnkern
from attnkern.reference import modules as seeds

from .case import layer_cases

SHAPES = [(8, 128, 80, 80), (8, 256, 40, 40), (8, 512, 20, 20)]  # a YOLO neck's P3 / P4 / P5 maps (640 input)
SMOKE_SHAPES = [(2, 64, 5, 7)]


def layers(c):
    """(family, seed module, attnkern module, seed's impl name) for c channels."""
    return [
        ("SEAttention layer", seeds.SeedSEAttention(c, 16), attnkern.nn.SEAttention(c, 16), "seed"),
        ("CBAM layer", seeds.SeedCBAM(c, 16, 7), attnkern.nn.CBAM(c, 16, 7), "seed"),
    ]


def cases(device, smoke):
    return layer_cases(layers, SMOKE_SHAPES if smoke else SHAPES, device)
