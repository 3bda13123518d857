"""Which formulation each op runs on CUDA: its hand-written kernel, or the plain cuBLAS/cuDNN/SDPA
formulation (``attnkern.ops._plain``).

**The rule** (DESIGN.md, "CUDA code that is fast by design"): an op runs its plain formulation on CUDA
where the performance model says its kernel loses to it by more than 3× — the model's error bar — at
a benchmark shape, in the direction (forward, backward) the call runs, or loses by any margin at every
benchmark shape for the calls the choice covers (inference: the forward; training: forward + backward;
a dtype); elsewhere it runs its kernel.
Where a kernel loses at one shape only, the entry names the size measure behind the loss (from the
model's cause for it) and a threshold placed between the benchmark shapes where it loses and those
where it does not.

**The evidence is a model, not a measurement**: ``benchmarks/perf_model.py``, H200 SXM, float32, good
to ±2–3× (its table: ``benchmarks/results/2026-12-03-cuda-model.md``); no GPU has run these kernels
yet. The figures below are modelled kernel time / modelled plain time (>1: the kernel is slower). A
GPU run (``scripts/gpu_check.sh``, whose benchmark has an "attnkern" and an "attnkern kernels" row
for every routed family) replaces them.

**The setting** (CUDA tensors only; CPU tensors always run the CPU kernels, whatever the setting):

- ``auto`` (the default): the table below;
- ``always``: the hand-written kernels everywhere — for measuring them on a GPU and for their tests.

It is chosen by the environment variable ``ATTNKERN_CUDA_KERNELS=auto|always`` (read at import) and,
taking precedence, by :func:`cuda_kernels` blocks. As :func:`attnkern.export.portable`, the setting is
process-wide, not per thread. The choice is made when an op's forward runs; its backward follows it.
"""

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch

__all__ = ["ROUTES", "Route", "SETTINGS", "cuda_kernels", "cuda_kernels_setting", "routes_to_plain", "plain_on_cuda"]

SETTINGS = ("auto", "always")
ENV_VAR = "ATTNKERN_CUDA_KERNELS"


@dataclass(frozen=True)
class Route:
    """Where one op runs its plain formulation on CUDA (under the setting ``auto``).

    plain: False — the kernel always (the model has it at or within its error of the plain path).
    True — the plain formulation, further limited by:
      dtypes: only for inputs of these dtypes (every dtype when empty);
      with_grad: only when a gradient is needed (the kernel's backward loses, its forward does not), but
        in ``plain_dtypes`` whether or not one is (there the forward loses too);
      size_at_least / size_below: only when the op's ``size`` measure (named in ``size``) is ≥ / < it;
      and, for a kernel that wins in some dtypes: a call in one of ``kernel_dtypes`` with its ``size``
      measure ≤ ``kernel_size_max`` runs the kernel.
    formulation: what runs instead; model: the model's figures behind the entry.
    """

    plain: bool
    formulation: str = ""
    model: str = ""
    dtypes: Tuple[torch.dtype, ...] = ()
    with_grad: bool = False
    plain_dtypes: Tuple[torch.dtype, ...] = ()
    size: str = ""
    size_at_least: Optional[int] = None
    size_below: Optional[int] = None
    kernel_dtypes: Tuple[torch.dtype, ...] = ()
    kernel_size_max: Optional[int] = None


# The table. Figures: modelled kernel / plain time at the benchmark shapes (H200, float32 unless a dtype is
# named), fwd / bwd.
ROUTES: Dict[str, Route] = {
    # Centring (ATen, float64) then one cuBLAS bmm each way: fwd 0.81–0.89×, bwd 0.55–0.60× at every benchmark
    # shape (SAN 16×64×48×48: 31.2 / 31.0 µs against 35.3 / 56.1; 1×64×200×200: 27.0 / 31.4 against 31.0 /
    # 57.4) — the plain path's own formulation with a launch fewer forward, the backward's one GEMM: keep.
    "covpool": Route(False, model="fwd 0.81–0.89×, bwd 0.55–0.60× (16×64×48×48: 0.88× / 0.55×)"),
    # n ≤ 64: one block per matrix, conflict-free products (fwd 32.5 µs, bwd 65 µs at n = 64 against 144 /
    # 246); larger n: the same steps over batched cuBLAS in float32, 12 products forward and 25 backward
    # against the plain path's 14 and 26 (0.69–0.86×). In fp16/bf16 the plain path's products run on tensor
    # cores while the batched path keeps float32 (CUDA cores): 1.8× / 2.2× at iSQRT-COV 32×256×14×14,
    # 6.9× / 8.2× at YOLO P5 8×1024×20×20 (the one-block kernel still 0.26× /
    # 0.32× at n = 64). So half-precision matrices past one block (n > 64) take the reference in their
    # dtype: float32 accumulation inside each bmm, the iterates rounded to the dtype between steps (relative
    # error ≈ 0.5–0.8% in bf16 at n = 80–256 on fresh covariances, against ≈ 0.2% for float32 iterates).
    "sqrtm_newton_schulz": Route(True, "reference.sqrtm_newton_schulz in the input dtype (bmm on tensor cores), "
                                       "autograd's backward",
                                 "fwd 0.26×, bwd 0.32× (n = 64); 0.69–0.86× (float32, n = 256, 1024); "
                                 "fp16/bf16 n = 256, 1024: fwd 1.8–6.9×, bwd 2.2–8.2×",
                                 dtypes=(torch.float16, torch.bfloat16), size="n (matrix order)", size_at_least=65),
    # A block a row: contiguous copies, no division or square root per element: 0.51–0.63× (bf16 0.47–0.70×;
    # a thread an element before: 0.60–1.07×, bf16 up to 1.52×): keep.
    "triuvec": Route(False, model="0.51–0.63× (bf16 0.47–0.70×); 0.60–1.07× before"),
    # Batched cuBLAS products around a softmax kernel (criss_cross_cuda.cu): 0.55× / 0.51× at the CCNet head
    # 2×512×97×97 (173 / 330 µs), 0.47× / 0.42× at YOLO P5 8×1024×20×20 (its row products one call over the 8
    # samples), 0.40× / 0.36× at 1×256×64×64; bfloat16 0.35–0.50× (CCNet head 87.6 / 160 µs, YOLO P5 45.8 /
    # 82.2). (The one-block-per-pixel kernels before: 4.3–27.8×.)
    "criss_cross_attention": Route(False, model="0.55× / 0.51× (CCNet 2×512×97×97), 0.47× / 0.42× (8×1024×20×20), "
                                                "0.40× / 0.36× (1×256×64×64); bfloat16 0.50× / 0.45×, "
                                                "0.45× / 0.40×, 0.40× / 0.35×"),
    # Loses at the CCNet head only: 3.1× / 6.4× there (2·64·97·97·193 = 232M multiply-adds: one
    # thread per energy, L2-bound), wins at YOLO P5 and 1×256×64×64 (0.46–0.86×, ~16M multiply-adds:
    # the plain path's launches dominate). Threshold 2^26 ≈ 67M multiply-adds, between the two, where
    # the model interpolates to ~1.7× fwd / ~2.6× bwd.
    "criss_cross_affinity": Route(True, "two einsums (row, column) and a gather of the column without the pixel",
                                  "3.1× / 6.4× (2×64×97×97); 0.46–0.86× (8×128×20×20, 1×32×64×64)",
                                  size="B·C·H·W·(H+W−1) multiply-adds", size_at_least=2**26),
    # 6.0× / 11.8× at the CCNet head, 1.6× / 3.4× at 1×256×64×64, 1.2× / 2.2× at YOLO P5.
    "criss_cross_aggregate": Route(True, "two einsums (row, column with a zero at the pixel)",
                                   "6.0× / 11.8× (2×512×97×97), 1.6× / 3.4× (1×256×64×64), "
                                   "1.2× / 2.2× (8×1024×20×20)"),
    # In float32 the SIMT kernels lose: backward 6.9–21.9× (Swin-T stage 1: 21.9×), forward 1.9–2.8×. In
    # fp16/bf16 the tensor-core kernels (window_attention_mma*.cuh: windows of ≤ 64 tokens, head dims ≤ 64;
    # model in bfloat16: benchmarks/results/2026-12-03-cuda-model-bf16.md) win or tie at every benchmark
    # shape: forward 0.17–0.21× (Swin-T stage 1: 28.5 µs against SDPA's 144), backward 0.31–0.47× (Swin-T
    # 74.2 µs against 199; SwinIR classical 19.9 against 41.9): they keep the kernel. Size: max(N, d).
    "window_attention": Route(True, "roll, window partition, F.scaled_dot_product_attention with bias + masks as "
                                    "attn_mask, window reverse, roll back",
                              "fwd 1.9–2.8×, bwd 6.9–21.9× (Swin-T 32×56×56 C96 w7: 2.8× / 21.9×); "
                              "bf16 on tensor cores: fwd 0.17–0.21×, bwd 0.31–0.47×",
                              size="max(window tokens, head dim)",
                              kernel_dtypes=(torch.float16, torch.bfloat16), kernel_size_max=64),
    # Pixels bucketed by region, then tiled products over each region's pixels: the forward wins in float32
    # (0.78–0.97×; 8.0× / 91× before). The backward's guide gradient needs every region's response at every
    # pixel, r× the forward's products on CUDA cores against the plain path's TF32 convolutions: bwd
    # 1.39–2.54× (8×64→64 k3 r8 32×32: 0.78× / 1.77×; 16×128→128 k3 r8 40×40: 0.84× / 2.54×), a training
    # step (forward + backward) 1.28–2.02×. In bfloat16, where the plain path's convolutions run on tensor
    # cores, both lose: fwd 1.08–1.34×, bwd 1.84–4.53×. So: float32/float64 inference keeps the kernel;
    # training, and fp16/bf16 always, take every region's grouped conv2d and the gather.
    "dynamic_region_conv": Route(True, "every region's grouped conv2d, then the gather by the guide "
                                       "(reference.dynamic_region_conv)",
                                 "fwd 0.78–0.97×, bwd 1.39–2.54× (8×64→64 k3 r8 32×32: 0.78× / 1.77×); "
                                 "bf16: fwd 1.08–1.34×, bwd 1.84–4.53×",
                                 with_grad=True, plain_dtypes=(torch.float16, torch.bfloat16)),
    # Blocks of 32 pixels × 8 channel slices, each pixel's argmax once a block: the backward in one coalesced
    # pass over outputs, 0.32–0.69× (3.2–6.2× before); the forward 0.59–0.70× (bf16 0.57–0.79×; an argmax
    # per element before: 0.67–0.92×, bf16 up to 1.23×): keep.
    "region_assign": Route(False, model="fwd 0.59–0.70×, bwd 0.32–0.69× (bf16: 0.57–0.79×, 0.45–0.86×)"),
    # Small planes (≤ 512 vector chunks) a warp each, shuffle reductions; larger ones a block: fwd 0.47–0.48×
    # (bf16 0.48–0.50×; a block a plane everywhere before: up to 0.92×, bf16 1.08× at 8×512×20×20), bwd
    # 0.20–0.22× (bf16 0.20–0.28×): keep.
    "channel_pool": Route(False, model="fwd 0.47–0.48×, bwd 0.20–0.22× (bf16: 0.48–0.50×, 0.20–0.28×)"),
    # Blocks of 32 pixels × 8–32 channel slices, ≤ 16 channels a thread (gating_cuda.cu,
    # reduce_channels_per_pixel): fwd 0.30–0.41×, bwd 0.21–0.29× (bf16 0.43–0.47×, 0.26–0.35×); with 8 slices
    # always, 8×512×20×20's 100 blocks walked 64 channels a thread: fwd 1.0× (bf16 1.12×).
    "spatial_pool": Route(False, model="fwd 0.30–0.41×, bwd 0.21–0.29× (bf16: 0.43–0.47×, 0.26–0.35×)"),
    # The pixel gate's gradient over the same channel slices: bwd 0.29–0.33× (3.55× before). The forward in
    # 16-byte chunks (a thread an element before: SE's channel gate alone 1.23–1.30×, bf16 1.37–1.56×): CBAM
    # 0.46–0.47×, SE 0.91–0.95× (bf16 0.93–0.97×), the DRAM floor and a launch.
    "apply_gates": Route(False, model="CBAM gates: fwd 0.46–0.47×, bwd 0.29–0.33×; SE (channel gate only): fwd "
                                      "0.91–0.95×, bwd 0.35–0.40×"),
    # SGE, a block a (sample, group) (64 groups at the gating shapes): fwd 0.32–0.48×, bwd 0.28–0.37× of the
    # layer's ATen ops (bf16 0.37–0.85×, 0.34–0.64×), latency-bound on each thread's walk over the group's
    # channels: keep.
    "group_enhance": Route(False, model="fwd 0.32–0.48×, bwd 0.28–0.37× (bf16: 0.37–0.85×, 0.34–0.64×)"),
}


def _read_env() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in SETTINGS:
        warnings.warn(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not one of {', '.join(SETTINGS)}: using 'auto'",
                      RuntimeWarning, stacklevel=2)
        return "auto"
    return value


_ENV_SETTING = _read_env()
_settings: List[str] = []  # the cuda_kernels() blocks entered, innermost last


def _check_setting(setting: object) -> str:
    if not isinstance(setting, str) or setting not in SETTINGS:
        raise ValueError(f"cuda_kernels: setting must be one of {', '.join(map(repr, SETTINGS))}, got {setting!r}")
    return setting


@contextlib.contextmanager
def cuda_kernels(setting: str = "always") -> Iterator[None]:
    """Within the block, CUDA tensors run attnkern's hand-written kernels everywhere (``"always"``) or as
    the routing table says (``"auto"``, e.g. to override ``ATTNKERN_CUDA_KERNELS=always``). Blocks
    nest, the innermost deciding; the setting is process-wide, not per thread. CPU tensors are not
    affected. The choice is made when an op's forward runs; its backward follows it.

    Example::

        with attnkern.ops.cuda_kernels("always"):   # time the kernels themselves
            out = attnkern.ops.window_attention(qkv, bias, 8, 4)
    """
    _settings.append(_check_setting(setting))
    try:
        yield
    finally:
        _settings.pop()


def cuda_kernels_setting() -> str:
    """The setting now: the innermost :func:`cuda_kernels` block, else ``ATTNKERN_CUDA_KERNELS`` (at
    import), else ``"auto"``."""
    return _settings[-1] if _settings else _ENV_SETTING


def routes_to_plain(op: str, device_type: str, *, grad: bool = False, size: Optional[int] = None,
                    setting: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> bool:
    """Whether `op` runs its plain formulation on a `device_type` tensor: only on "cuda", under the
    setting "auto" (default: the current one), where ROUTES says so. `grad`: a gradient is needed;
    `size`: the op's size measure (ROUTES[op].size), None when it does not apply; `dtype`: the inputs'."""
    if device_type != "cuda":
        return False
    if _check_setting(setting if setting is not None else cuda_kernels_setting()) == "always":
        return False
    route = ROUTES[op]
    if not route.plain or (route.dtypes and dtype not in route.dtypes):
        return False
    if route.with_grad and not grad and dtype not in route.plain_dtypes:
        return False
    if dtype in route.kernel_dtypes and size is not None and size <= route.kernel_size_max:
        return False
    if route.size_at_least is not None and (size is None or size < route.size_at_least):
        return False
    if route.size_below is not None and (size is None or size >= route.size_below):
        return False
    return True


def plain_on_cuda(op: str, *tensors: Optional[torch.Tensor], size: Optional[int] = None) -> bool:
    """routes_to_plain for an op's tensor arguments (None for an absent optional one), all on one device
    (the caller's use_kernel checked it): a gradient is needed when grad mode is on and one of them
    requires it."""
    present = [t for t in tensors if t is not None]
    if not present or present[0].device.type != "cuda":
        return False
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in present)
    return routes_to_plain(op, "cuda", grad=grad, size=size, dtype=present[0].dtype)
