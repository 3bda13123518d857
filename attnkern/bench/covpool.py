"""covpool family: SAN's covariance pooling followed by the Newton–Schulz square root (5 iterations).

Implementations, all computing sqrtm(cov(x)) → [B, C, C]:
  seed             SAN's formulation: covariance through the M×M centering matrix Î (X·Î·Xᵀ),
                   Newton–Schulz with autograd (its hand-written backward has the same cost)
  plain PyTorch    the best a user writes by hand: centred bmm, Newton–Schulz loop of bmm
  plain, compiled  the same under torch.compile (inductor)
  attnkern         attnkern.ops.covpool + attnkern.ops.sqrtm_newton_schulz (on CUDA: the centring then one
                   cuBLAS bmm for the covariance; Newton–Schulz in one block per matrix up to 64×64, batched
                   cuBLAS above; fp16/bf16 past 64×64 routed to the plain loop, attnkern.ops._cuda_routing)
  attnkern kernels (CUDA) the same with the hand-written kernels everywhere (cuda_kernels("always"))
"""

import torch

from attnkern import ops, reference

from .case import Case, bench_dtypes, random_inputs, with_kernels_row

ITERS = 5
SHAPES = [  # (label, B, C, H, W): the shapes users run (seed 000 and its README)
    ("SAN training 16×64×48×48", 16, 64, 48, 48),
    ("SAN test crop 1×64×200×200", 1, 64, 200, 200),
    ("iSQRT-COV 32×256×14×14", 32, 256, 14, 14),
    ("YOLO P5 8×1024×20×20", 8, 1024, 20, 20),
]
SMOKE_SHAPES = [("smoke 2×8×5×6", 2, 8, 5, 6)]
SEED_MEMORY_LIMIT = {"cpu": 4 * 2**30, "cuda": 16 * 2**30}  # the seed's Î needs B·M² elements, ×3 in flight


def seed(x):
    return reference.sqrtm_newton_schulz(reference.covpool_centering_matrix(x), ITERS)


def plain(x):
    return reference.sqrtm_newton_schulz(reference.covpool(x), ITERS)


def attnkern_op(x):
    return ops.sqrtm_newton_schulz(ops.covpool(x), ITERS)


def cases(device, smoke):
    for label, b, c, h, w in SMOKE_SHAPES if smoke else SHAPES:
        for dtype in bench_dtypes(device):
            m = h * w
            seed_bytes = 3 * b * m * m * torch.finfo(dtype).bits // 8
            skip = {}
            if seed_bytes > SEED_MEMORY_LIMIT[device]:
                skip["seed"] = f"skipped: its M×M matrices need {seed_bytes / 2**30:.0f} GiB"
            yield Case(
                family="covpool+sqrtm",
                shape=label,
                dtype=dtype,
                make_inputs=random_inputs((b, c, h, w), device=device, dtype=dtype),
                impls=with_kernels_row({
                    "seed": seed,
                    "plain PyTorch": plain,
                    "plain, torch.compile": torch.compile(plain, dynamic=False),
                    "attnkern": attnkern_op,
                }, device),
                skip=skip,
            )
