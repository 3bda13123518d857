"""region_conv family: DRConv.

Two groups of rows:
  DRConv2d layer   seed (every region's per-sample convolution, then asign_index: the published
                   formulation through attnkern.reference) vs attnkern.nn.DRConv2d, same weights
  dynamic conv op  the bare op vs a plain conv2d of the same shape (one filter for every pixel: the
                   floor a dynamic convolution can reach)
On CUDA "attnkern" runs as the routing table says (attnkern.ops._cuda_routing: the kernels for float32
inference; training and fp16/bf16, DRConv's grouped conv2d and gather), and "attnkern kernels" runs the
hand-written kernels (attnkern.ops.cuda_kernels("always")).
"""

import torch

import attnkern
from attnkern import ops, reference

from .case import Case, bench_dtypes, random_inputs, with_kernels_row

SHAPES = [  # (B, Cin, Cout, k, r, H, W), padding k // 2
    (8, 64, 64, 3, 8, 32, 32),
    (16, 128, 128, 3, 8, 40, 40),
    (8, 256, 256, 1, 4, 20, 20),
]
SMOKE_SHAPES = [(2, 4, 4, 3, 3, 6, 5)]


def seed_layer(layer):
    def forward(x):
        k = layer.kernel_size
        filters = layer.conv_kernel(x).view(x.shape[0], layer.region_num, layer.out_channels, layer.in_channels, k, k)
        outputs = reference.region_correlation(x, filters, **layer.kwargs)
        return reference.region_assign(outputs, layer.conv_guide(x))
    return forward


def cases(device, smoke):
    for b, cin, cout, k, r, h, w in SMOKE_SHAPES if smoke else SHAPES:
        label = f"{b}×{cin}→{cout} k{k} r{r} {h}×{w}"
        for dtype in bench_dtypes(device):
            layer = attnkern.nn.DRConv2d(cin, cout, k, region_num=r, padding=k // 2).to(device=device, dtype=dtype)
            yield Case(family="DRConv2d layer", shape=label, dtype=dtype,
                       make_inputs=random_inputs((b, cin, h, w), device=device, dtype=dtype),
                       impls=with_kernels_row({"seed": seed_layer(layer), "attnkern": layer}, device))
            yield Case(
                family="dynamic conv op",
                shape=label,
                dtype=dtype,
                make_inputs=random_inputs((b, cin, h, w), (b, r, cout, cin, k, k), (b, r, h, w), device=device,
                                          dtype=dtype),
                impls=with_kernels_row({
                    "conv2d, one filter (floor)": lambda x, f, g, p=k // 2: torch.nn.functional.conv2d(x, f[0, 0], padding=p),
                    "attnkern": lambda x, f, g, p=k // 2: ops.dynamic_region_conv(x, f, g, padding=p),
                }, device),
            )
