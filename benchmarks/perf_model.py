"""A performance model of every attnkern CUDA kernel — the design document until a GPU measures.

    python benchmarks/perf_model.py [--gpu h200|h100] [--ptxas FILE] [--dtype float32|bfloat16] [--markdown]

For each op at each benchmark shape (SHAPES, the case names of attnkern/bench/<family>.py) and for every
kernel launch the op makes, forward and backward: the launch configuration as the .cu host code computes
it, FLOPs, minimum bytes, the device's floors, registers / static shared memory / spills from
`-Xptxas -v` (sm_90), occupancy, waves, a modelled time, and the plain-PyTorch formulation's modelled
time. Pure Python: no torch, no GPU. It is a model, not a measurement: good to ±2–3×.

The model (one small function per kernel, named after it, counts what one launch executes):
  * Counts are warp-level totals taken from the loop structure of the kernel: FMAs (`ffma`), other issued
    arithmetic (`alu`: index math, compares, loop overhead; a 64-bit integer division or modulo by a
    runtime value costs DIV64 issue slots, a 32-bit one DIV32; a (row, column) pair stepped by a constant
    stride instead, INDEX_STEP), special-function ops (`mufu`: one per exp/log, plus EXP_ALU issue slots of
    range reduction; an ex2.approx.ftz of a prescaled argument is the MUFU alone), memory instructions (`mem`),
    L1/shared wavefronts (`lsu`), bytes between L1 and L2 (`l2`), bytes from DRAM (`dram`, at least the minimum).
  * Coalescing and bank conflicts come from the index pattern: the kernel's own index formulas are
    evaluated for the 32 lanes of a representative warp; a global access costs one wavefront per distinct
    128-byte line and moves its distinct 32-byte sectors; a shared access costs as many wavefronts as the
    most-used bank has distinct words (broadcasts are free).
  * Per SM and clock (sm_90): 4 warp-instructions issued, 4 warp-FMAs (the FP32 peak), 0.5 MUFU,
    1 L1/shared wavefront (128 B). L2→SM 10 TB/s (at most 64 B/clk/SM), HBM at 90 % of peak.
    Work is spread over min(CTAs, SMs) SMs with whole CTAs per SM (ctas / ceil(ctas / SMs)).
  * Latency hiding (Little's law): a pipe needs 16 (FMA/issue) or 32 (LSU) independent warp-operations in
    flight per SM; resident warps × the kernel's `ilp` provide them. Memory time is at least global
    load requests × their average latency / (resident warps × ilp) per SM (L1 hit 20 ns, L2 150 ns, DRAM
    550 ns; the fractions that miss L1 and L2 estimated from the bytes that reach L2 and DRAM); requests a warp
    issues in batches (several loads into registers before their stores) count 1/batch each. Stores do not
    count: a warp does not wait for them (their bytes are in the L2 and DRAM terms).
  * time = max(core terms, memory terms) + 4 µs launch; for tiled kernels whose load and compute phases
    are separated by __syncthreads and which have one CTA per SM, the core and memory terms add.
  * L1 keeps the sectors a lane walks through consecutively (a row read element by element), and a warp's
    re-read window where the resident warps' windows fit in 200 KB; other re-reads go to L2.
  * DRAM bytes = the minimum, plus re-reads where the set re-read while the grid sweeps one sample exceeds
    75 % of L2.
  * --dtype bfloat16 halves the bytes of the tensors (accumulation stays FP32, so the kernels' counts do
    not change) and puts the plain path's GEMMs, convolutions and SDPA on tensor cores.
  * The plain-PyTorch path (what a user writes instead: the benchmark's einsum/bmm/SDPA/conv formulation)
    is a list of library calls: cuBLAS GEMM at 70 % of FP32 peak on the SMs its tiles fill (split-K when
    the tiles cannot fill the GPU), cuDNN convolution at 40 % of the TF32 tensor-core peak (PyTorch's
    default allows TF32 in cuDNN), SDPA memory-efficient (fp32 SIMT) at 35 % of FP32 peak, elementwise
    and reductions at 80 % of HBM bandwidth; each call + 4 µs launch.
  * Floors: bytes / HBM bandwidth, FLOPs / FP32 peak, FLOPs / dense BF16 tensor-core peak. An op's bytes
    are what its inputs and outputs need, read or written once: the launches that only move its
    intermediates (covpool's and criss_cross_attention's library calls, window attention's per-block
    bias-gradient partials and their sum) declare none. ×floor is the
    modelled time over max(memory, FP32) floor for the kernels on CUDA cores (FP32 arithmetic), over
    max(memory, tensor-core) for those on tensor cores (mma.sync, at MMA_SYNC_EFF of the dense peak). The
    tensor-core floor says what a tensor-core formulation could reach.
  * Data assumptions: the guide of DRConv selects regions uniformly at random per pixel (worst case for
    the gathers); sqrtm's training forward saves the iterates; window attention has a bias, no explicit
    mask; criss-cross layer: q, k with C/8 channels, v with C.
"""

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# ---- devices -------------------------------------------------------------------------------------

GPUS = {
    "h200": dict(name="H200 SXM", hbm=4.8e12, fp32=67e12, tc=990e12, sms=132, l2_size=50 * 2**20),
    "h100": dict(name="H100 SXM", hbm=3.35e12, fp32=67e12, tc=989e12, sms=132, l2_size=50 * 2**20),
}
# sm_90 limits
REGS_PER_SM, SMEM_PER_SM, SMEM_OPTIN, SMEM_RESERVED = 65536, 228 * 1024, 227 * 1024, 1024
THREADS_PER_SM, CTAS_PER_SM, MAX_THREADS_PER_BLOCK, STATIC_SMEM_MAX = 2048, 32, 1024, 48 * 1024
# model constants (see the docstring)
L2_BW, L2_BYTES_PER_CLK_SM, HBM_EFF = 10e12, 64, 0.9
LAT_L1, LAT_L2, LAT_DRAM = 20e-9, 150e-9, 550e-9
L1_BYTES = 200 * 1024  # L1 data cache left to a CTA that uses little shared memory
LAUNCH = 4e-6
DIV64, DIV32, EXP_ALU = 25, 15, 8
INDEX_STEP = 4  # add, add, compare, select
BLOCK_COPY_IN_FLIGHT = 4  # common/cuda_vector.cuh: kBlockCopyInFlight
PLAIN_GEMM_EFF, PLAIN_CONV_EFF, PLAIN_SDPA_EFF, PLAIN_BW_EFF = 0.7, 0.4, 0.35, 0.8
REGS_UNKNOWN = 32  # assumed when the ptxas output has no entry for a kernel
SMS_SM90 = 132  # what host code that sizes grids by the SM count sees on an H100/H200
# mma.sync.m16n8k16: 16·8·16 multiply-adds. On sm_90 the warp-level mma.sync (not wgmma) reaches about 60 % of
# the dense tensor-core peak.
MMA_FLOPS, MMA_SYNC_EFF = 2 * 16 * 8 * 16, 0.6


class Device:
    def __init__(self, key: str):
        spec = GPUS[key]
        self.key, self.name, self.sms, self.l2_size = key, spec["name"], spec["sms"], spec["l2_size"]
        self.hbm, self.fp32, self.tc = spec["hbm"], spec["fp32"], spec["tc"]
        self.clock = self.fp32 / (self.sms * 128 * 2)  # FP32 peak = SMs × 128 lanes × 2 FLOP × clock


# ---- the benchmark shapes (case names as in attnkern/bench/<family>.py) --------------------------

SHAPES = [  # (family, case, parameters, main): the benchmark's order; `main` marks the shape the summary shows
    ("covpool", "SAN training 16×64×48×48", dict(B=16, C=64, H=48, W=48), True),
    ("covpool", "SAN test crop 1×64×200×200", dict(B=1, C=64, H=200, W=200), False),
    ("covpool", "iSQRT-COV 32×256×14×14", dict(B=32, C=256, H=14, W=14), False),
    ("covpool", "YOLO P5 8×1024×20×20", dict(B=8, C=1024, H=20, W=20), False),
    ("criss_cross", "CCNet head 2×512×97×97", dict(B=2, C=512, H=97, W=97), True),
    ("criss_cross", "YOLO P5 8×1024×20×20", dict(B=8, C=1024, H=20, W=20), False),
    ("criss_cross", "1×256×64×64", dict(B=1, C=256, H=64, W=64), False),
    ("window_attention", "SwinIR-light 4×64×64 C60 h6 w8 s4",
     dict(B=4, H=64, W=64, C=60, heads=6, window=8, shift=4), False),
    ("window_attention", "SwinIR classical 2×64×64 C180 h6 w8",
     dict(B=2, H=64, W=64, C=180, heads=6, window=8, shift=0), False),
    ("window_attention", "Swin-T stage 1 32×56×56 C96 h3 w7 s3",
     dict(B=32, H=56, W=56, C=96, heads=3, window=7, shift=3), True),
    ("region_conv", "8×64→64 k3 r8 32×32", dict(B=8, Cin=64, Cout=64, k=3, R=8, H=32, W=32), True),
    ("region_conv", "16×128→128 k3 r8 40×40", dict(B=16, Cin=128, Cout=128, k=3, R=8, H=40, W=40), False),
    ("region_conv", "8×256→256 k1 r4 20×20", dict(B=8, Cin=256, Cout=256, k=1, R=4, H=20, W=20), False),
    ("gating", "8×128×80×80", dict(B=8, C=128, H=80, W=80), False),
    ("gating", "8×256×40×40", dict(B=8, C=256, H=40, W=40), True),
    ("gating", "8×512×20×20", dict(B=8, C=512, H=20, W=20), False),
]
SQRTM_ITERS = 5  # attnkern.bench.covpool.ITERS

# ---- ptxas -v output -------------------------------------------------------------------------------

DTYPE_CODES = {"f": "float32", "d": "float64", "N3c104HalfE": "float16", "N3c108BFloat16E": "bfloat16"}


@dataclass
class Resources:
    regs: int
    smem: int = 0  # static shared memory, bytes
    stack: Optional[int] = None
    spill_stores: Optional[int] = None
    spill_loads: Optional[int] = None


def demangle_kernel(mangled: str) -> Tuple[List[str], Optional[str], Tuple[str, ...]]:
    """(nested names, first template type as a dtype name, template literals) of an Itanium-mangled
    kernel name: `_ZN8attnkern7covpool<anon>23triuvec_backward_kernelIfEEv…` → (['attnkern', 'covpool',
    '<anon>', 'triuvec_backward_kernel'], 'float32', ()). Enough for the names ptxas prints for these kernels."""
    if mangled.startswith("_ZN"):
        s, nested = mangled[3:], True
    elif mangled.startswith("_Z"):
        s, nested = mangled[2:], False
    else:
        return [mangled], None, ()
    names, i = [], 0
    while i < len(s) and s[i].isdigit():
        j = i
        while j < len(s) and s[j].isdigit():
            j += 1
        n = int(s[i:j])
        names.append(s[j:j + n])
        i = j + n
        if not nested:
            break
    rest, dtype, literals = s[i:], None, []

    def read_literals(k: int) -> int:  # non-type template arguments from rest[k]: Lb0E, Li3E, ...
        while rest.startswith("L", k):
            end = rest.index("E", k)
            literals.append(rest[k + 1:end])
            k = end + 1
        return k

    if rest.startswith("I"):
        k = read_literals(1)
        for code, name in DTYPE_CODES.items():
            if rest.startswith(code, k):
                dtype = name
                read_literals(k + len(code))  # after the type too: pixel_major_kernel<float, true>
                break
    return names, dtype, tuple(literals)


def parse_ptxas(text: str, arch: str = "sm_90") -> Dict[Tuple[str, str, str, Tuple[str, ...]], Resources]:
    """{(family namespace, kernel base name, dtype, template literals): Resources} for `arch`, from
    `-Xptxas -v` output (the whole build log, or build/ptxas.txt's filtered lines)."""
    entries, props, current = {}, {}, None
    pending_props = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'", line)
        if m:
            current = (m.group(1), m.group(2))
            pending_props = None
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            pending_props = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and pending_props:
            props[pending_props] = tuple(int(g) for g in m.groups())
            pending_props = None
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            smem = re.search(r"(\d+) bytes smem", line)
            entries[current] = Resources(regs=int(m.group(1)), smem=int(smem.group(1)) if smem else 0)
            current = None
    table = {}
    for (mangled, entry_arch), res in entries.items():
        if entry_arch.rstrip("a") != arch:
            continue
        if mangled in props:
            res.stack, res.spill_stores, res.spill_loads = props[mangled]
        names, dtype, literals = demangle_kernel(mangled)
        family = names[1] if len(names) > 2 and names[0] == "attnkern" else ""
        table[(family, names[-1], dtype or "", literals)] = res
    return table


# ---- access patterns ------------------------------------------------------------------------------


def global_access(byte_addresses: Sequence[int]) -> Tuple[int, int]:
    """(distinct 128-byte lines, distinct 32-byte sectors) of one warp's global access."""
    return len({a // 128 for a in byte_addresses}), len({a // 32 for a in byte_addresses})


def bank_ways(word_addresses: Sequence[int]) -> int:
    """Wavefronts of one warp's shared-memory access: the most distinct words any of the 32 banks holds."""
    banks: Dict[int, set] = {}
    for a in word_addresses:
        banks.setdefault(a % 32, set()).add(a)
    return max((len(v) for v in banks.values()), default=1)


def warps_of(count: int) -> int:
    return -(-count // 32)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def capped_blocks(blocks: int) -> int:  # csrc/common/cuda_utils.cuh: capped_blocks
    return min(blocks, 65535 * 16)


def element_blocks(total: int) -> int:  # csrc/common/cuda_utils.cuh: element_blocks
    return capped_blocks(ceil_div(total, 256))


def warp_blocks(rows: int) -> int:  # csrc/common/cuda_utils.cuh: warp_blocks (a warp a row, 256-thread blocks)
    return capped_blocks(ceil_div(rows, 256 // 32))


def vector_width(n: int, elem: int) -> int:  # csrc/common/cuda_vector.cuh: vector_width, aligned tensors
    return next(v for v in (8, 4, 2, 1) if v * elem <= 16 and n % v == 0)


# ---- one kernel launch and its model --------------------------------------------------------------


@dataclass
class Launch:
    """What one launch executes, as warp-level totals (see the module docstring)."""

    family: str
    kernel: str
    grid: Tuple[int, int, int]
    block: Tuple[int, int, int]
    dyn_smem: int = 0
    static_smem: int = 0  # from the code; ptxas's figure is used when present
    flops: float = 0.0
    min_bytes: float = 0.0
    ffma: float = 0.0
    alu: float = 0.0
    mufu: float = 0.0
    hmma: float = 0.0  # tensor-core mma.sync.m16n8k16 instructions (warp level)
    mem: float = 0.0  # memory instructions (issue slots)
    lsu: float = 0.0  # L1/shared wavefronts
    l2: float = 0.0  # bytes between L1 and L2
    dram: float = 0.0  # bytes from/to DRAM (raised to min_bytes)
    gld: float = 0.0  # global warp load requests (Little's law: a warp waits for its loads, not its stores)
    ilp: float = 1.0  # independent operations in flight per warp
    gld_batched: float = 0.0  # of gld: requests a warp issues `batch` at a time (loads before their stores)
    batch: float = 1.0
    ctas_active: Optional[int] = None  # CTAs that do work (default: all)
    warps_busy: Optional[int] = None  # warps of a CTA that do work (default: all)
    phased: bool = False  # load and compute phases separated by __syncthreads
    reuse_set: float = 0.0  # bytes re-read through L2 while the grid sweeps one sample
    note: str = ""
    template: Tuple[str, ...] = ()  # template literals, to pick the ptxas entry (aggregate_kernel<true>)
    aten: Optional[Callable[["Device"], float]] = None  # an ATen/cuBLAS call of the host code: its plain model
    aten_tensor_cores: bool = False  # that call runs on tensor cores (cuBLAS GEMMs of 16-bit operands)

    @property
    def ctas(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    @property
    def on_tensor_cores(self) -> bool:
        return self.hmma > 0 or self.aten_tensor_cores


def aten_call(family: str, what: str, time_of: Callable[["Device"], float], flops: float = 0.0,
              nbytes: float = 0.0, tensor_cores: bool = False) -> Launch:
    """An ATen or cuBLAS call the host code makes, timed by the plain-path model."""
    return Launch(family, what, (0, 0, 0), (0, 0, 0), flops=flops, min_bytes=nbytes, aten=time_of,
                  aten_tensor_cores=tensor_cores)


def occupancy(threads: int, regs: int, smem: int) -> int:
    """Resident CTAs per SM on sm_90 (registers allocated per warp in units of 256, 1 KiB reserved per CTA)."""
    warps = warps_of(threads)
    by_threads = THREADS_PER_SM // (warps * 32)
    regs_per_warp = ceil_div(max(regs, 1), 8) * 8 * 32
    by_regs = (REGS_PER_SM // regs_per_warp) // warps
    by_smem = SMEM_PER_SM // (ceil_div(smem + SMEM_RESERVED, 128) * 128)
    return max(0, min(by_threads, by_regs, by_smem, CTAS_PER_SM))


def model(launch: Launch, dev: Device, res: Optional[Resources]) -> dict:
    """The modelled time of one launch, with the quantities the report shows."""
    out = dict(launch=launch, res=res, regs=res.regs if res else None)
    out["floor_mem"] = launch.min_bytes / dev.hbm
    out["floor_fp32"] = launch.flops / dev.fp32
    out["floor_tc"] = launch.flops / dev.tc
    # Kernels on tensor cores are held to the tensor-core floor, the others to the FP32 one.
    out["floor"] = max(out["floor_mem"], out["floor_tc"] if launch.on_tensor_cores else out["floor_fp32"])
    if launch.aten is not None:
        out.update(time=launch.aten(dev), bound="ATen/cuBLAS (plain model)", bps=None, occ=None, waves=None, smem=None)
        return out
    regs = res.regs if res else REGS_UNKNOWN
    smem = (res.smem if res else launch.static_smem) + launch.dyn_smem
    bps = occupancy(launch.threads, regs, smem)
    ctas = launch.ctas_active if launch.ctas_active is not None else launch.ctas
    warps_cta = launch.warps_busy or warps_of(launch.threads)
    out.update(smem=smem, bps=bps, occ=bps * warps_of(launch.threads) * 32 / THREADS_PER_SM,
               waves=launch.ctas / max(1, bps * dev.sms))
    if ctas == 0 or bps == 0:
        out.update(time=LAUNCH, bound="empty" if ctas == 0 else "does not fit an SM")
        return out
    clk, sm_eff = dev.clock, ctas / ceil_div(ctas, dev.sms)
    resident = min(bps, ceil_div(ctas, dev.sms)) * warps_cta
    eff_core = min(1.0, resident * launch.ilp / 16)
    eff_lsu = min(1.0, resident * launch.ilp / 32)
    dram = max(launch.dram, launch.min_bytes)
    if launch.reuse_set > 0.75 * dev.l2_size:  # the re-read set spills from L2
        dram += max(0.0, launch.l2 - dram) * (1 - 0.75 * dev.l2_size / launch.reuse_set)
    terms = {
        "issue": (launch.ffma + launch.alu + launch.mufu + launch.hmma + launch.mem) / (4 * clk * sm_eff) / eff_core,
        "TC": launch.hmma * MMA_FLOPS / (MMA_SYNC_EFF * dev.tc / dev.sms * sm_eff) / eff_core,
        "FP32": launch.ffma / (4 * clk * sm_eff) / eff_core,
        "SFU": launch.mufu / (0.5 * clk * sm_eff) / eff_core,
        "LSU": launch.lsu / (clk * sm_eff) / eff_lsu,
    }
    mem_terms = {
        "L2": launch.l2 / min(L2_BW, sm_eff * L2_BYTES_PER_CLK_SM * clk),
        "DRAM": dram / (HBM_EFF * dev.hbm),
    }
    if launch.gld > 0:  # Little's law on requests: each miss fraction from the bytes that go further
        miss = min(1.0, launch.l2 / (32 * launch.gld))
        latency = LAT_L1 + miss * (LAT_L2 - LAT_L1) + miss * min(1.0, dram / max(launch.l2, 1.0)) * (LAT_DRAM - LAT_L2)
        serial = launch.gld - launch.gld_batched + launch.gld_batched / launch.batch
        mem_terms["latency"] = serial * latency / (sm_eff * resident * launch.ilp)
    core_bound = max(terms, key=terms.get)
    mem_bound = max(mem_terms, key=mem_terms.get)
    t_core, t_mem = terms[core_bound], mem_terms[mem_bound]
    if launch.phased and resident <= warps_cta:  # one CTA per SM: phases do not overlap
        t, bound = t_core + t_mem, f"{core_bound}+{mem_bound}"
    else:
        t, bound = max(t_core, t_mem), core_bound if t_core >= t_mem else mem_bound
    out.update(time=t + LAUNCH, bound=bound, terms={**terms, **mem_terms}, dram=dram, eff_core=eff_core)
    return out


# ---- the plain-PyTorch path: library calls ---------------------------------------------------------


def plain_ew(dev: Device, nbytes: float, flops: float = 0.0) -> float:
    """An elementwise or reduction kernel of ATen."""
    return max(nbytes / (PLAIN_BW_EFF * dev.hbm), flops / dev.fp32) + LAUNCH


def plain_gemm(dev: Device, batch: int, m: int, n: int, k: int, elem: int) -> float:
    """cuBLAS (batched) GEMM: 128×128 tiles (64×64 for small outputs), split-K when the tiles cannot fill
    the GPU; FP32 without TF32 (PyTorch's default for matmul), tensor cores for 16-bit types."""
    tile = 128 if m >= 128 and n >= 128 else 64
    ctas = batch * ceil_div(m, tile) * ceil_div(n, tile)
    split = min(k // (2 * tile), ceil_div(dev.sms, ctas)) if ctas < dev.sms and k >= 4 * tile else 1
    total = ctas * max(split, 1)
    util = total / (dev.sms * ceil_div(total, dev.sms))
    peak = dev.fp32 if elem == 4 else dev.tc
    nbytes = elem * batch * (m * k + k * n + m * n)
    return max(2.0 * batch * m * n * k / (PLAIN_GEMM_EFF * peak * util), nbytes / (PLAIN_BW_EFF * dev.hbm)) + LAUNCH


def plain_conv(dev: Device, flops: float, nbytes: float, elem: int) -> float:
    """cuDNN convolution: TF32 tensor cores for float32 (torch.backends.cudnn.allow_tf32 defaults to True)."""
    peak = dev.tc / 2 if elem == 4 else dev.tc
    return max(flops / (PLAIN_CONV_EFF * peak), nbytes / (PLAIN_BW_EFF * dev.hbm)) + LAUNCH


def plain_sdpa(dev: Device, flops: float, nbytes: float, elem: int) -> float:
    """F.scaled_dot_product_attention, memory-efficient backend (an attn_mask rules out flash)."""
    peak = dev.fp32 if elem == 4 else dev.tc
    return max(flops / (PLAIN_SDPA_EFF * peak), nbytes / (PLAIN_BW_EFF * dev.hbm)) + LAUNCH


# ---- ops: which kernels each op launches, and its plain formulation --------------------------------


@dataclass
class Op:
    family: str
    name: str
    forward: Callable[[dict, int], List[Launch]]  # (shape parameters, element size) → launches
    backward: Callable[[dict, int], List[Launch]]
    plain_forward: Callable[[Device, dict, int], float]
    plain_backward: Callable[[Device, dict, int], float]
    note: str = ""


OPS: List[Op] = []  # filled family by family below


# ==== kernel families (one function per kernel, named after it) ====================================


# ---- covpool (csrc/covpool/covpool_cuda.cu) ---------------------------------------------------------
# covpool.h: a product's 64×64 tile in 16×16 cells of 4×4 entries (one cell a thread of the one-block kernels)
CELL_SIDE, CELL_ROWS = 4, 16
SQRTM_THREADS, SQRTM_MAX_N = CELL_ROWS * CELL_ROWS, CELL_SIDE * CELL_ROWS  # covpool_cuda.cu: kSqrtmThreads, kSqrtmMaxN
SQRTM_FORWARD_MATRICES, SQRTM_BACKWARD_MATRICES = 4, 7  # covpool_cuda.cu: kForwardMatrices, kBackwardMatrices


def sqrtm_ld(n: int) -> int:  # covpool_cuda.cu: sqrtm_ld (odd row stride of the shared matrices)
    return n | 1


def sqrtm_smem(n: int, matrices: int) -> int:  # covpool_cuda.cu: sqrtm_smem_bytes (float accumulation)
    return (matrices * n * sqrtm_ld(n) + SQRTM_THREADS) * 4


def sqrtm_one_block(n: int, matrices: int) -> bool:  # covpool_cuda.cu: sqrtm_one_block
    return n <= SQRTM_MAX_N and sqrtm_smem(n, matrices) <= SMEM_OPTIN


def product_wavefronts(n: int, a_transposed: bool, b_transposed: bool) -> float:
    """Shared-memory wavefronts of one k-step of SquareProducts::product_cell (covpool.h) for a warp of the
    one-block kernels (thread t owns the cell of rows t / 16 + 16u, columns t % 16 + 16v): its 4 loads of
    op(a)'s column and 4 of op(b)'s row, averaged over the block's 8 warps. Rows sqrtm_ld(n) apart."""
    ld, total = sqrtm_ld(n), 0
    a_steps = (1, ld) if a_transposed else (ld, 1)  # (along i, along k) of op(a)[i, k]
    b_steps = (1, ld) if b_transposed else (ld, 1)  # (along k, along j) of op(b)[k, j]: (row, col) swapped
    for w in range(SQRTM_THREADS // 32):
        cells = [(t // CELL_ROWS, t % CELL_ROWS) for t in range(32 * w, 32 * w + 32)]
        k = 1
        for u in range(CELL_SIDE):
            total += bank_ways([min(r + CELL_ROWS * u, n - 1) * a_steps[0] + k * a_steps[1] for r, _ in cells])
            total += bank_ways([k * b_steps[0] + min(c + CELL_ROWS * u, n - 1) * b_steps[1] for _, c in cells])
    return total / (SQRTM_THREADS // 32)


def block_products(n: int, matrices: int, products: Sequence[Tuple[bool, bool]]) -> dict:
    """Counts of `products` n×n one-block products (SquareProducts::product_cell, one cell a thread) for
    `matrices` CTAs; each product is (op(a) transposed, op(b) transposed). Per warp and k-step: 16 FFMA, 8 shared
    loads, ~3 address/loop instructions; then 16 stores and up to 16 reads of the added matrix a thread."""
    warps = matrices * SQRTM_THREADS // 32
    steps = warps * n * len(products)  # warp k-steps
    lsu = sum(product_wavefronts(n, a, b) for a, b in products) * warps * n
    return dict(ffma=steps * CELL_SIDE ** 2, mem=steps * 2 * CELL_SIDE + warps * len(products) * 32,
                lsu=lsu + warps * len(products) * 2 * 32, alu=steps * 3 + warps * len(products) * 60)


def sqrtm_forward_kernel(B: int, n: int, iters: int, save: bool, elem: int) -> Launch:
    """covpool_cuda.cu: sqrtm_newton_schulz_cuda — one CTA of 256 threads per matrix, all in shared memory."""
    nn = n * n
    products = 3 * (iters - 1) if iters > 1 else 2  # step 0 one (Z₀ = I), the others three, the final two
    c = block_products(n, B, [(False, False)] * products)
    saved = (3 * iters - 4) * nn * 4 * B if save else 0  # each step's T, Y', Z' (Z₁ = T₀: one matrix)
    wi = B * 8 * ceil_div(nn, SQRTM_THREADS)  # warp-iterations of an element loop
    return Launch("covpool", "sqrtm_forward_kernel", (B, 1, 1), (SQRTM_THREADS, 1, 1),
                  dyn_smem=sqrtm_smem(n, SQRTM_FORWARD_MATRICES), flops=2.0 * products * n ** 3 * B,
                  min_bytes=2 * B * nn * elem + saved, ffma=c["ffma"], alu=c["alu"] + wi * 42, mem=c["mem"] + wi * 10,
                  lsu=c["lsu"] + wi * 10, l2=2 * B * nn * elem + saved, gld=wi,  # loads: a; the rest are stores
                  ilp=4, note=f"{products} n×n products in one CTA per matrix: 4×4 outputs a thread, 8 conflict-free "
                              "shared loads per 16 FMAs")


def sqrtm_backward_kernel(B: int, n: int, iters: int, elem: int) -> Launch:
    """covpool_cuda.cu: sqrtm_newton_schulz_backward_cuda — one CTA per matrix; Y_f, Z_f and each step's
    Yₖ, Zₖ, Tₖ copied from the saved iterates into shared memory (coalesced; Y₀ = a/t and Z₀ = I formed from
    a, read again), the products read transposed operands from rows of odd stride: conflict-free as the others."""
    nn = n * n
    prologue = [(False, False), (False, True), (True, False), (True, False), (False, True)]  # Z·Y, the final's four
    step = [(True, False), (False, True), (False, True), (True, False), (True, False), (False, True)]
    first = [(True, False), (False, True)] if iters > 1 else []  # step 0 reversed: Aᵀ·gY₁, gY₁·T₀ᵀ
    products = prologue + step * max(iters - 2, 0) + first
    c = block_products(n, B, products)
    wi = B * 8 * ceil_div(nn, SQRTM_THREADS)
    copies = 2 + 3 * (iters - 1)  # matrices copied into shared memory: Y_f, Z_f and each step's Yₖ, Zₖ, Tₖ
    iterates = 3 * (iters - 1) * nn * 4 * B  # read from the saved iterates: all copies but Y₀ and Z₀
    saved = (3 * iters - 4) * nn * 4 * B  # the distinct ones (T₀ is read twice, as T₀ and as Z₁)
    worst = max(product_wavefronts(n, a, b) for a, b in products)
    return Launch("covpool", "sqrtm_backward_kernel", (B, 1, 1), (SQRTM_THREADS, 1, 1),
                  dyn_smem=sqrtm_smem(n, SQRTM_BACKWARD_MATRICES), flops=2.0 * len(products) * n ** 3 * B,
                  min_bytes=4 * B * nn * elem + saved, ffma=c["ffma"], alu=c["alu"] + wi * (64 + 6 * copies),
                  mem=c["mem"] + wi * (14 + 2 * copies), lsu=c["lsu"] + wi * (14 + 2 * copies),
                  l2=4 * B * nn * elem + iterates, gld=wi * (1 + copies), ilp=4,  # a twice, G, gA; loads: all but gA, Z₀
                  note=f"{len(products)} products, 4×4 outputs a thread; transposed operands: {worst:.0f} wavefronts "
                       "per k-step, as the others")


def row_threads(length: int) -> int:  # csrc/common/cuda_utils.cuh: row_threads
    return min(ceil_div(max(length, 1), 32) * 32, 256)


def triu_row_launch(kernel: str, B: int, n: int, elem: int, steps: int, accesses: int, loads: int, min_bytes: float,
                    note: str, warps_busy: Optional[int] = None) -> Launch:
    """covpool_cuda.cu's triuvec kernels: a block per row (b, i) of the B·n rows (block-stride), one int64
    division a row, `steps` warp steps of a matrix's rows (8 instructions each) and `accesses` warp accesses
    of ≤ 32 consecutive elements (`loads` of them loads); a warp's run starts
    anywhere (triuvec rows start at i(i+1)/2), so it touches one line and one sector more than aligned."""
    threads = row_threads(n)
    lines, sectors = ceil_div(32 * elem, 128) + 1, ceil_div(32 * elem, 32) + 1
    return Launch("covpool", kernel, (capped_blocks(B * n), 1, 1), (threads, 1, 1), min_bytes=min_bytes,
                  alu=B * (steps * 8 + n * warps_of(threads) * (DIV64 + 10)), mem=B * accesses,
                  lsu=B * accesses * lines, l2=B * accesses * sectors * 32, gld=B * loads, ilp=2,
                  warps_busy=warps_busy, note=note)


def triuvec_kernel(B: int, n: int, elem: int) -> Launch:
    """covpool_cuda.cu: triuvec_cuda — row i's i + 1 entries copied: contiguous in a and in the output."""
    steps = sum(ceil_div(i + 1, 32) for i in range(n))  # a load and a store each
    return triu_row_launch("triuvec_kernel", B, n, elem, steps, 2 * steps, steps, 2 * B * n * (n + 1) // 2 * elem,
                           "a block a row, contiguous copies; one int64 division a row",
                           warps_busy=max(1, min(warps_of(row_threads(n)), ceil_div(n, 2 * 32))))


def triuvec_backward_kernel(B: int, n: int, elem: int) -> Launch:
    """covpool_cuda.cu: triuvec_backward_cuda — row i's n entries of [B, n, n]: the first i + 1 from the
    triuvec gradient, zeros past them."""
    stores = n * ceil_div(n, 32)  # warp steps over every row's n entries
    loads = sum(ceil_div(i + 1, 32) for i in range(n))  # the steps that read the gradient
    return triu_row_launch("triuvec_backward_kernel", B, n, elem, stores, stores + loads, loads,
                           B * n * (n + 1) // 2 * elem + B * n * n * elem, "a block a row, contiguous copies and zeros")


def covpool_dims(p: dict) -> Tuple[int, int, int]:
    return p["B"], p["C"], p["H"] * p["W"]


def sqrtm_batched(p: dict, elem: int, backward: bool) -> List[Launch]:
    """covpool_host.cpp: sqrtm_batched_forward / _backward — matrices too large for one CTA: at::bmm."""
    B, n, _ = covpool_dims(p)
    it = SQRTM_ITERS
    # Products: forward step 0 one (Z₀ = I), the other steps three, the final two; backward Z_f·Y_f, the
    # final step's four, the general steps six, step 0 two. Elementwise passes: forward a/t, T₀ (also Z₁), Y
    # copied into P, ·√t, the zero-trace fill; backward A = a/t, Gp, Gp copied into gY, ⟨gY, Y_f⟩, gZ₁
    # copied into gT, gA's −½·gT, ⟨gA, A⟩, /t, the zero-trace fill.
    gemms = 6 * it - 5 if backward else 3 * (it - 1)
    ews = 9 if backward else 5
    flops = 2.0 * gemms * B * n ** 3
    return [aten_call("covpool", f"at::bmm/baddbmm ×{gemms} (cuBLAS)", lambda d: gemms * plain_gemm(d, B, n, n, n, 4),
                      flops=flops, nbytes=gemms * 3 * B * n * n * 4),
            aten_call("covpool", f"ATen elementwise ×{ews}", lambda d: ews * plain_ew(d, 3 * B * n * n * 4),
                      nbytes=ews * 3 * B * n * n * 4)]


def plain_covpool(dev: Device, p: dict, elem: int, backward: bool) -> float:
    """reference.covpool: xc = x − mean, bmm(xc, xcᵀ) / M; its autograd backward."""
    B, C, M = covpool_dims(p)
    x, cc = B * C * M * elem, B * C * C * elem
    if not backward:
        return plain_ew(dev, x) + plain_ew(dev, 2 * x) + plain_gemm(dev, B, C, C, M, elem) + plain_ew(dev, 2 * cc)
    return (plain_ew(dev, 2 * cc) + 2 * plain_gemm(dev, B, C, M, C, elem) + plain_ew(dev, 3 * x) + plain_ew(dev, x)
            + plain_ew(dev, 3 * x))


def plain_sqrtm(dev: Device, p: dict, elem: int, backward: bool) -> float:
    """reference.sqrtm_newton_schulz: a loop of bmm and elementwise ops; its autograd backward."""
    B, n, _ = covpool_dims(p)
    products, it = 3 * (SQRTM_ITERS - 1) + 2, SQRTM_ITERS
    gemms, ews = (2 * products, 3 * (it - 1) + 10) if backward else (products, 2 * (it - 1) + 8)
    return gemms * plain_gemm(dev, B, n, n, n, elem) + ews * plain_ew(dev, 3 * B * n * n * elem)


def plain_triuvec(dev: Device, p: dict, elem: int, backward: bool) -> float:
    """reference.triuvec: a[:, rows, cols] (tril_indices, an index gather); backward: zeros + index_put."""
    B, n, _ = covpool_dims(p)
    length = n * (n + 1) // 2
    scatter = B * n * n * elem if backward else 0
    return plain_ew(dev, 16 * length) + plain_ew(dev, B * length * elem * 2 + 16 * length + scatter)


def centring(B: int, C: int, M: int, elem: int) -> List[Launch]:
    """covpool_cuda.cu: centred — the row means and Xc = X − μ, ATen, in float64 (memory-bound: the FP64
    arithmetic, ≤ 2 operations an element, is far below the H200's 34 TFLOP/s)."""
    x = B * C * M * elem
    return [aten_call("covpool", "ATen: μ = x.mean(2) (float64)", lambda d: plain_ew(d, x + B * C * 8), nbytes=x),
            aten_call("covpool", "ATen: Xc = x − μ", lambda d: plain_ew(d, 2 * x + B * C * 8))]


def covpool_forward(p: dict, elem: int) -> List[Launch]:
    """covpool_cuda.cu: covpool_cuda — centring, then Σ = Xc·Xcᵀ/M by one at::baddbmm (cuBLAS, α = 1/M)."""
    B, C, M = covpool_dims(p)
    return centring(B, C, M, elem) + [
        aten_call("covpool", "at::baddbmm Xc·Xcᵀ/M (cuBLAS)", lambda d: plain_gemm(d, B, C, C, M, elem),
                  flops=2.0 * B * C * C * M, nbytes=B * C * C * elem)]


def covpool_backward(p: dict, elem: int) -> List[Launch]:
    """covpool_cuda.cu: covpool_backward_cuda — centring, G + Gᵀ, then (G + Gᵀ)·Xc/M by one at::baddbmm."""
    B, C, M = covpool_dims(p)
    cc = B * C * C * elem
    return centring(B, C, M, elem) + [
        aten_call("covpool", "ATen: G + Gᵀ", lambda d: plain_ew(d, 3 * cc), nbytes=cc),
        aten_call("covpool", "at::baddbmm (G + Gᵀ)·Xc/M (cuBLAS)", lambda d: plain_gemm(d, B, C, M, C, elem),
                  flops=2.0 * B * C * C * M, nbytes=B * C * M * elem)]


def sqrtm_forward(p: dict, elem: int) -> List[Launch]:
    B, n, _ = covpool_dims(p)
    if not sqrtm_one_block(n, SQRTM_FORWARD_MATRICES):
        return sqrtm_batched(p, elem, backward=False)
    return [sqrtm_forward_kernel(B, n, SQRTM_ITERS, True, elem)]


def sqrtm_backward(p: dict, elem: int) -> List[Launch]:
    B, n, _ = covpool_dims(p)
    if not sqrtm_one_block(n, SQRTM_BACKWARD_MATRICES):
        return sqrtm_batched(p, elem, backward=True)
    return [sqrtm_backward_kernel(B, n, SQRTM_ITERS, elem)]


OPS += [
    Op("covpool", "covpool", covpool_forward, covpool_backward,
       lambda d, p, e: plain_covpool(d, p, e, False), lambda d, p, e: plain_covpool(d, p, e, True)),
    Op("covpool", "sqrtm_newton_schulz (5 it.)", sqrtm_forward, sqrtm_backward,
       lambda d, p, e: plain_sqrtm(d, p, e, False), lambda d, p, e: plain_sqrtm(d, p, e, True)),
    Op("covpool", "triuvec", lambda p, e: [triuvec_kernel(p["B"], p["C"], e)],
       lambda p, e: [triuvec_backward_kernel(p["B"], p["C"], e)],
       lambda d, p, e: plain_triuvec(d, p, e, False), lambda d, p, e: plain_triuvec(d, p, e, True)),
]


# ---- criss_cross (csrc/criss_cross/criss_cross_cuda.cu, criss_cross.h) -------------------------------
TILE, TILE_ROWS = 32, 8  # criss_cross_cuda.cu: kTile, kTileRows
SOFTMAX_WARPS = 8  # criss_cross_cuda.cu: kSoftmaxWarps
CACHED_PER_LANE = 4  # criss_cross_cuda.cu: kCachedPerLane


def position_offset(p: int, h: int, w: int, H: int, W: int) -> int:  # criss_cross.h: position_offset
    return h * W + p if p < W else ((p - W) if (p - W) < h else (p - W) + 1) * W + w


def mean_access(warps: Sequence[Sequence[int]], elem: int) -> Tuple[float, float]:
    """Average (lines, sectors) over warps given as lists of element offsets."""
    if not warps:
        return 0.0, 0.0
    stats = [global_access([a * elem for a in warp]) for warp in warps]
    return sum(s[0] for s in stats) / len(stats), sum(s[1] for s in stats) / len(stats)


def spread(n: int, k: int) -> List[int]:
    """k indices spread evenly over range(n) (all of them when n <= k)."""
    return list(range(n)) if n <= k else [i * n // k for i in range(k)]


def affinity_kernel(B: int, C: int, H: int, W: int, elem: int) -> Launch:
    """criss_cross_cuda.cu: affinity_cuda — one thread per energy e[b, p, h, w] (w fastest), a channel loop."""
    HW, P = H * W, H + W - 1
    total = B * P * HW
    q_warps, k_warps = [], []
    for p in spread(P, 12):
        for start in spread(HW, 8):
            lanes = [((p * HW + start + t) // HW) % P for t in range(32)], [(start + t) % HW for t in range(32)]
            for c in (0, 1):
                q_warps.append([c * HW + px for px in lanes[1]])
                k_warps.append([c * HW + position_offset(pp, px // W, px % W, H, W) for pp, px in zip(*lanes)])
    (lq, sq), (lk, sk) = mean_access(q_warps, elem), mean_access(k_warps, elem)
    w = warps_of(total)
    return Launch("criss_cross", "affinity_kernel", (element_blocks(total), 1, 1), (256, 1, 1),
                  flops=2.0 * total * C, min_bytes=2 * B * C * HW * elem + total * elem, ffma=w * C,
                  alu=w * (4 * DIV64 + 3 * C + 10), mem=w * (2 * C + 1), lsu=w * (C * (lq + lk) + 1),
                  l2=w * (C * (sq + sk) + elem) * 32, gld=w * 2 * C, ilp=8, reuse_set=2 * C * HW * elem,
                  note=f"one thread per energy, {C}-channel loop; {lq + lk:.1f} lines per channel step")


def aggregate_kernel(transposed: bool, B: int, C: int, H: int, W: int, elem: int) -> Launch:
    """criss_cross_cuda.cu: aggregate_cuda<transposed> — one thread per output element (w fastest), a loop
    over the P positions (aggregate_entry) or over the pixels whose lists hold it (aggregate_transposed_entry)."""
    HW, P = H * W, H + W - 1
    total = B * C * HW
    a_warps, x_warps = [], []
    for start in spread(HW, 8):
        px = [(start + t) % HW for t in range(32)]
        hs, ws = [q // W for q in px], [q % W for q in px]
        if not transposed:
            for p in spread(P, 48):
                a_warps.append([p * HW + q for q in px])
                x_warps.append([position_offset(p, h, w, H, W) for h, w in zip(hs, ws)])
        else:
            for w2 in spread(W, 24):  # the row loop: a[x·HW + y·W + w'], g[y·W + w']
                a_warps.append([x * HW + y * W + w2 for y, x in zip(hs, ws)])
                x_warps.append([y * W + w2 for y in hs])
            for h2 in spread(H, 24):  # the column loop: a[(W + column_index(y, h))·HW + h·W + x], g[h·W + x]
                a_warps.append([(W + (y if y < h2 else y - 1)) * HW + h2 * W + x for y, x in zip(hs, ws) if y != h2])
                x_warps.append([h2 * W + x for y, x in zip(hs, ws) if y != h2])
    (la, sa), (lx, sx) = mean_access(a_warps, elem), mean_access(x_warps, elem)
    w = warps_of(total)
    steps = (W + H - 1) if transposed else P
    kind = "transposed: rows of attn gathered HW apart" if transposed else "P-position loop"
    return Launch("criss_cross", "aggregate_kernel", (element_blocks(total), 1, 1), (256, 1, 1),
                  flops=2.0 * total * P, min_bytes=B * P * HW * elem + 2 * total * elem, ffma=w * steps,
                  alu=w * (4 * DIV64 + 8 * steps), mem=w * (2 * steps + 1), lsu=w * (steps * (la + lx) + 1),
                  l2=w * (steps * (sa + sx) + elem) * 32, gld=w * 2 * steps, ilp=4,
                  reuse_set=P * HW * elem + HW * elem, template=("b1",) if transposed else ("b0",),
                  note=f"{kind}; {la + lx:.1f} lines per step")


# The fused attention (attention_cuda): cuBLAS GEMMs for the energies and outputs, a softmax kernel between.
# Launches that only move the op's intermediates (the transposes, the softmax's energies and weights) declare
# no minimum bytes (module docstring, "Floors").


def layout_vector_width(N: int, L: int, W: int, elem: int) -> int:
    """criss_cross_cuda.cu: layout_vector_width — the widest V (≤ 16 bytes, dividing L) whose grid fills a wave
    of 8 tiles an SM, else 1."""
    vec = 16 // elem
    while vec > 1 and (L % vec or N * ceil_div(L, TILE * vec) * ceil_div(W, TILE) < 8 * SMS_SM90):
        vec //= 2
    return vec


def transpose_kernel(N: int, L: int, W: int, elem: int, to_columns: bool, rows: bool = False) -> Launch:
    """criss_cross_cuda.cu: change_layout — [N, L, W] into [N, W, L] (to_columns) or back, by tiles of 32·V image
    rows × 32 columns through shared memory (swizzled: conflict-free), a CTA of 32×8 threads a tile: on the image
    side a warp access is 32 values of one image row, on the column side 32·V values of one column row (V a lane,
    up to 16 bytes: layout_vector_width). The same counts either way. rows: the row layout written beside each
    image-side read (to_columns), or, back into the image, the row products (row layout) read beside each
    image-side write and added; an image row's (c, h) stepped with it."""
    V = layout_vector_width(N, L, W, elem)
    tiles_l, tiles_w = ceil_div(L, TILE * V), ceil_div(W, TILE)
    tiles = N * tiles_l * tiles_w
    image_accesses, column_steps = N * tiles_w * L, N * tiles_l * W  # warp-level accesses of each side
    added = image_accesses if rows else 0  # warp-level accesses of the row layout
    li, si = mean_access([[l * W + w0 + t for t in range(min(W - w0, TILE))]
                          for l in spread(L, 4) for w0 in range(0, W, TILE)], elem)
    lc, sc = mean_access([[w * L + l0 + t for t in range(min(L - l0, TILE * V))]
                          for w in spread(W, 4) for l0 in spread(L, 4)], elem)
    wavefronts = max(1, TILE * elem // 128)  # a shared access of 32 lanes' values: 4-byte words, 128 B each
    return Launch("criss_cross", "transpose_kernel", (capped_blocks(tiles), 1, 1), (TILE, TILE_ROWS, 1),
                  static_smem=TILE * V * TILE * elem,
                  alu=tiles * TILE_ROWS * (3 * DIV64 + 16) + (image_accesses + column_steps) * 10
                  + column_steps * V * 2 + added * 10 + (tiles * TILE_ROWS * 2 * DIV64 if rows else 0),
                  mem=2 * image_accesses + column_steps * (1 + V) + added,
                  lsu=image_accesses * (li + wavefronts) + column_steps * (lc + V * wavefronts) + added * li,
                  l2=(image_accesses * si + column_steps * sc + added * si) * 32,
                  dram=(2 + rows) * N * L * W * elem,
                  gld=image_accesses if to_columns else column_steps + added, ilp=4, phased=True,
                  template=(f"b{int(to_columns)}", f"b{int(rows)}", f"i{V}"),
                  note=f"{TILE * V}×{TILE} tiles: {li:.1f} / {lc:.1f} lines per image / column warp access"
                  + (", the row layout " + ("written" if to_columns else "added") if rows else ""))


def softmax_launch(kernel: str, B: int, H: int, W: int, elem: int, lists: int, passes: int, writes: int,
                   flops_per_position: int, min_bytes: float) -> Launch:
    """A softmax kernel: a warp per pixel (8 a CTA), lanes over its W row and H column positions (each list
    contiguous, 4-byte). `lists` values read a position (the energies, and their gradients): a lane's first
    CACHED_PER_LANE of each list loaded into registers at once (LaneLists: every load of the pixel in flight
    together), positions past them re-read by each of the `passes` passes; `writes` elem-byte values written
    (the weights, and the energies' gradients). One exponential a held position (exp_difference: an FADD, an
    FMUL and the SFU's ex2, its result held in place of the energy), two a position past them (each pass
    recomputes it)."""
    pixels, L = B * H * W, W + H
    its = ceil_div(W, 32) + ceil_div(H, 32)  # warp-iterations over one pixel's lists
    held = min(ceil_div(W, 32), CACHED_PER_LANE) + min(ceil_div(H, 32), CACHED_PER_LANE)
    tail_positions = max(0, W - 32 * CACHED_PER_LANE) + max(0, H - 32 * CACHED_PER_LANE)
    loads = lists * (held + (its - held) * passes)  # warp requests a pixel
    exps = held + 2 * (its - held)  # warp-level exponentials a pixel
    stores = its * writes
    lines = sum(mean_access([[j for j in range(min(n, 32))]], 4)[0] for n in (W, H)) / 2 + 0.5  # unaligned starts
    return Launch("criss_cross", kernel, (ceil_div(pixels, SOFTMAX_WARPS), 1, 1), (32, SOFTMAX_WARPS, 1),
                  flops=pixels * L * flops_per_position, min_bytes=min_bytes, ffma=pixels * its * passes,
                  alu=pixels * (3 * DIV64 + 10 * 5 + its * (passes + writes) * 6 + 2 * exps), mufu=pixels * (exps + 1),
                  mem=pixels * (loads + stores),
                  lsu=pixels * ((loads + stores) * lines + 10),
                  l2=pixels * (4 * lists * (L + tail_positions * (passes - 1)) + L * elem * writes),
                  dram=pixels * L * (4 * lists + elem * writes) + pixels * 4,
                  gld=pixels * loads, gld_batched=pixels * lists * held, batch=lists * held,
                  note=f"a warp per pixel over its {W} + {H} energies, held in registers")


def softmax_kernel(B: int, H: int, W: int, elem: int) -> Launch:
    """criss_cross_cuda.cu: softmax_kernel — the energies loaded once; the max, then p = e^(e − max) held over
    them and Σ p, then the weights p / Σ p and the log-sum-exp written."""
    return softmax_launch("softmax_kernel", B, H, W, elem, lists=1, passes=3, writes=1,
                          flops_per_position=5, min_bytes=B * H * W * 4)


def softmax_backward_kernel(B: int, H: int, W: int, elem: int) -> Launch:
    """criss_cross_cuda.cu: softmax_backward_kernel — the energies and dS loaded once; D = Σ S·dS (S held over
    the energies), then the weights and dE (the inputs' type) written."""
    return softmax_launch("softmax_backward_kernel", B, H, W, elem, lists=2, passes=2, writes=2, flops_per_position=6,
                          min_bytes=B * H * W * 4)


def cc_gemm(what: str, batch: int, m: int, n: int, k: int, elem: int, calls: int = 1, nbytes: float = 0.0) -> Launch:
    """`calls` cuBLAS batched GEMMs of `batch` [m, k]·[k, n] products (elem: the operands' bytes)."""
    return aten_call("criss_cross", f"cuBLAS: {what}" + (f" ×{calls}" if calls > 1 else ""),
                     lambda d: calls * plain_gemm(d, batch, m, n, k, elem), flops=2.0 * calls * batch * m * n * k,
                     nbytes=nbytes, tensor_cores=elem == 2)


def pixel_major_kernel(B: int, Cq: int, H: int, W: int, elem: int, summing: bool = False) -> Launch:
    """criss_cross_cuda.cu: pixel_major — q and k [B, Cq, H, W] into [B, H, W, Cq] and [B, W, H, Cq]: 32 channels
    × 32 pixels of an image row a CTA of 32×8 threads (grid.y: q, k), read along w, written along c; summing
    (pixel_major_sums): back, ∂q and ∂k the sums of their rows and columns (accumulation type), read along c,
    written along w."""
    acc = max(elem, 4)
    tiles = B * H * ceil_div(Cq, TILE) * ceil_div(W, TILE)
    image, image_sectors = mean_access([[(c * H) * W + t for t in range(min(W, TILE))] for c in range(2)], elem)
    pixels, pixel_sectors = mean_access([[w * Cq + t for t in range(min(Cq, TILE))] for w in range(2)],
                                        acc if summing else elem)
    rows = 2 * tiles * min(TILE, max(Cq, W))  # warp-level row accesses of each pass
    x = B * Cq * H * W
    # a pass over the image (read, or written by the sum) and one over the pixel-major pair (written, or read)
    traffic = dict(lsu=rows * (image + 2 * pixels + 2), l2=rows * (image_sectors + 2 * pixel_sectors) * 32,
                   dram=2 * x * (elem + 2 * (acc if summing else elem)))
    kernel = "pixel_major_sum_kernel" if summing else "pixel_major_kernel"
    return Launch("criss_cross", kernel, (min(tiles, element_blocks(tiles * 256)), 2, 1),
                  (TILE, TILE_ROWS, 1), static_smem=TILE * (TILE + 1) * (acc if summing else elem),
                  min_bytes=2 * x * elem, alu=2 * tiles * TILE_ROWS * (4 * DIV64 + 14) + rows * (13 if summing else 12),
                  mem=rows * 5, **traffic, gld=rows * (2 if summing else 1), ilp=4, phased=True,
                  note=f"32×32 tiles: {image:.1f} / {pixels:.1f} lines per warp access of the image / a pixel-major "
                       + ("pair, summed" if summing else "copy"))


ROW_LAUNCH_BYTES = 16 << 20  # criss_cross_cuda.cu: kLaunchBytes


def rows_in_one_call(B: int, H: int, W: int, nbytes: int) -> bool:
    """criss_cross_cuda.cu: rows_in_one_call — the row products one GEMM over every sample's rows of x (nbytes)
    copied into the row layout by the transpose into the column layout (one GEMM with the columns in square
    images): a pass more a product, through the transposes (two passes' time), for B launches fewer (B − 1 where
    H ≠ W); or one GEMM a sample."""
    return (B if H == W else B - 1) * ROW_LAUNCH_BYTES > 2 * nbytes


def cc_row_column_gemms(what: str, B: int, H: int, W: int, row_mnk: Tuple[int, int, int],
                        column_mnk: Tuple[int, int, int], elem: int, calls: int = 1,
                        nbytes: float = 0.0) -> List[Launch]:
    """criss_cross_cuda.cu: accumulating_bmm_out of RowsAndColumns — `calls` row products (B·H of row_mnk) and
    column products (B·W of column_mnk): one call over both where their shapes agree (square images); the op's
    floor bytes (nbytes) on the first."""
    if H == W and row_mnk == column_mnk:
        return [cc_gemm(f"{what} by rows and columns (one call)", 2 * B * H, *row_mnk, elem, calls=calls,
                        nbytes=nbytes)]
    return [cc_gemm(f"{what} by rows", B * H, *row_mnk, elem, calls=calls, nbytes=nbytes),
            cc_gemm(f"{what} by columns", B * W, *column_mnk, elem, calls=calls)]


def cc_attention_forward(p: dict, elem: int) -> List[Launch]:
    B, Cq, Cv, H, W, _ = cc_dims(p)
    v = B * Cv * H * W * elem
    head = [pixel_major_kernel(B, Cq, H, W, elem),
            *cc_row_column_gemms("energies", B, H, W, (W, W, Cq), (H, H, Cq), elem),
            softmax_kernel(B, H, W, elem)]
    if rows_in_one_call(B, H, W, v):
        return head + [transpose_kernel(B, Cv * H, W, elem, to_columns=True, rows=True),
                       *cc_row_column_gemms("outputs", B, H, W, (Cv, W, W), (Cv, H, H), elem, nbytes=2 * v),
                       transpose_kernel(B, Cv * H, W, elem, to_columns=False, rows=True)]
    return head + [transpose_kernel(B, Cv * H, W, elem, to_columns=True),
                   cc_gemm("column outputs", B * W, Cv, H, H, elem),
                   transpose_kernel(B, Cv * H, W, elem, to_columns=False),
                   cc_gemm("rows added to the outputs (a call a sample)", H, Cv, W, W, elem, calls=B, nbytes=2 * v)]


def cc_attention_backward(p: dict, elem: int) -> List[Launch]:
    B, Cq, Cv, H, W, _ = cc_dims(p)
    v = B * Cv * H * W * elem
    head = [pixel_major_kernel(B, Cq, H, W, elem),
            *cc_row_column_gemms("energies", B, H, W, (W, W, Cq), (H, H, Cq), elem)]
    tail = [*cc_row_column_gemms("∂q, ∂k", B, H, W, (W, Cq, W), (H, Cq, H), elem, calls=2),
            pixel_major_kernel(B, Cq, H, W, elem, summing=True)]
    if rows_in_one_call(B, H, W, v):
        return head + [transpose_kernel(B, Cv * H, W, elem, to_columns=True, rows=True),  # g
                       transpose_kernel(B, Cv * H, W, elem, to_columns=True, rows=True),  # v
                       *cc_row_column_gemms("dS = gᵀ·v", B, H, W, (W, W, Cv), (H, H, Cv), elem, nbytes=2 * v),
                       softmax_backward_kernel(B, H, W, elem),
                       *cc_row_column_gemms("∂v", B, H, W, (Cv, W, W), (Cv, H, H), elem, nbytes=v),
                       transpose_kernel(B, Cv * H, W, elem, to_columns=False, rows=True)] + tail
    return head + [cc_gemm("row dS = gᵀ·v (a call a sample)", H, W, W, Cv, elem, calls=B, nbytes=2 * v),
                   transpose_kernel(2 * B, Cv * H, W, elem, to_columns=True),  # g and v: one launch
                   cc_gemm("column dS", B * W, H, H, Cv, elem),
                   softmax_backward_kernel(B, H, W, elem),
                   cc_gemm("column ∂v", B * W, Cv, H, H, elem),
                   transpose_kernel(B, Cv * H, W, elem, to_columns=False),
                   cc_gemm("rows added to ∂v (a call a sample)", H, Cv, W, W, elem, calls=B, nbytes=v)] + tail


def cc_dims(p: dict) -> Tuple[int, int, int, int, int, int]:
    B, C, H, W = p["B"], p["C"], p["H"], p["W"]
    return B, C // 8, C, H, W, H + W - 1


def plain_energies(dev: Device, p: dict, elem: int) -> float:
    """The two einsum energies (permute copies of q and k, two bmm) and their concatenation."""
    B, Cq, _, H, W, P = cc_dims(p)
    q = B * Cq * H * W * elem
    return (4 * plain_ew(dev, 2 * q) + plain_gemm(dev, B * W, H, H, Cq, elem) + plain_gemm(dev, B * H, W, W, Cq, elem)
            + plain_ew(dev, 2 * B * H * W * P * elem))


def plain_outputs(dev: Device, p: dict, elem: int) -> float:
    """The two einsum outputs (attention slices and v permuted, two bmm, outputs permuted back) and their sum."""
    B, _, Cv, H, W, P = cc_dims(p)
    v, a = B * Cv * H * W * elem, B * H * W * P * elem
    return (2 * plain_ew(dev, 2 * a / 2) + 4 * plain_ew(dev, 2 * v) + plain_gemm(dev, B * W, Cv, H, H, elem)
            + plain_gemm(dev, B * H, Cv, W, W, elem) + plain_ew(dev, 3 * v))


def plain_attention(dev: Device, p: dict, elem: int, backward: bool) -> float:
    """attnkern.ops._plain.criss_cross_attention (the benchmark's einsum row): energies, −inf diagonal,
    softmax, outputs; autograd backward: twice the bmm, the copies again, the softmax backward."""
    B, _, _, H, W, P = cc_dims(p)
    a = B * H * W * P * elem
    forward = plain_energies(dev, p, elem) + plain_outputs(dev, p, elem) + 2 * plain_ew(dev, 2 * a)
    return 2 * forward + plain_ew(dev, 3 * a) if backward else forward


OPS += [
    Op("criss_cross", "criss_cross_attention", cc_attention_forward, cc_attention_backward,
       lambda d, p, e: plain_attention(d, p, e, False), lambda d, p, e: plain_attention(d, p, e, True)),
    Op("criss_cross", "criss_cross_affinity (q, k: C/8)",
       lambda p, e: [affinity_kernel(p["B"], p["C"] // 8, p["H"], p["W"], e)],
       lambda p, e: [aggregate_kernel(False, p["B"], p["C"] // 8, p["H"], p["W"], e),
                     aggregate_kernel(True, p["B"], p["C"] // 8, p["H"], p["W"], e)],
       plain_energies, lambda d, p, e: 2 * plain_energies(d, p, e)),
    Op("criss_cross", "criss_cross_aggregate (v: C)",
       lambda p, e: [aggregate_kernel(False, p["B"], p["C"], p["H"], p["W"], e)],
       lambda p, e: [affinity_kernel(p["B"], p["C"], p["H"], p["W"], e),
                     aggregate_kernel(True, p["B"], p["C"], p["H"], p["W"], e)],
       plain_outputs, lambda d, p, e: 2 * plain_outputs(d, p, e)),
]


# ---- window_attention (csrc/window_attention/window_attention_cuda.cu, window_attention.h) -----------


def wa_block_threads(N: int) -> int:  # window_attention_cuda.cu: block_threads
    return min(ceil_div(N, 32) * 32, 256)


def wa_smem_bytes(N: int, d: int, arrays: int, scalars: int) -> int:  # window_attention_cuda.cu: smem_bytes
    return (arrays * N * (d + 1) + scalars * N) * 4 + N * (8 + 4)


class WindowGrid:  # window_attention.h: WindowGrid
    def __init__(self, H: int, W: int, window: int, shift: int):
        self.H, self.W, self.window, self.shift = H, W, window, shift
        self.N, self.nW = window * window, (H // window) * (W // window)

    def pixel(self, w: int, t: int) -> int:
        sy = (w // (self.W // self.window)) * self.window + t // self.window
        sx = (w % (self.W // self.window)) * self.window + t % self.window
        y, x = sy + self.shift, sx + self.shift
        return (y if y < self.H else y - self.H) * self.W + (x if x < self.W else x - self.W)


def window_patterns(g: WindowGrid, heads: int, d: int, elem: int) -> dict:
    """Access costs of the window kernels for head 0 of a window in the middle of the image."""
    N, ld, w = g.N, d + 1, g.nW // 2 + (g.W // g.window) // 2
    pix = [g.pixel(w, t) for t in range(N)]
    element_warps = [range(s, min(s + 32, N * d)) for s in range(0, N * d, 32)]
    qkv = mean_access([[((pix[e // d] * 3) * heads) * d + e % d for e in lanes] for lanes in element_warps], elem)
    out = mean_access([[(pix[e // d] * heads) * d + e % d for e in lanes] for lanes in element_warps], elem)
    sts = sum(bank_ways([(e // d) * ld + e % d for e in lanes]) for lanes in element_warps) / len(element_warps)
    row_warps = [range(s, min(s + 32, N)) for s in range(0, N, 32)]
    rows = [bank_ways([i * ld for i in lanes]) for lanes in row_warps]  # x[i·ld + c], lanes = rows
    bias_rows = [mean_access([[i * N + j for i in lanes] for j in spread(N, 8)], elem) for lanes in row_warps]
    bias_cols = [mean_access([[i * N + j for j in lanes] for i in spread(N, 8)], elem) for lanes in row_warps]
    by_token = [mean_access([[(pix[i] * heads) * d for i in lanes]], 4) for lanes in row_warps]  # lse, o rows
    return dict(qkv=qkv, out=out, sts=sts, rows=rows, bias_rows=bias_rows, bias_cols=bias_cols, by_token=by_token,
                element_warps=len(element_warps), row_warps=len(row_warps))


def window_load_counts(pt: dict, d: int, loads: int) -> dict:
    """load_window (+ dO): per CTA and window, `loads` gathered tensors of N·d elements into shared memory."""
    ew = pt["element_warps"]
    return dict(alu=pt["row_warps"] * (6 * DIV64 + 20) + ew * (DIV64 + 4 * loads), mem=ew * (1 + 2 * loads),
                lsu=ew * (2 + loads * (pt["qkv"][0] + pt["sts"])), l2=ew * loads * pt["qkv"][1] * 32, gld=ew * loads)


def forward_kernel(B: int, g: WindowGrid, heads: int, d: int, elem: int) -> Launch:
    """window_attention_cuda.cu: window_attention_cuda — one CTA per (window, head), thread i owns query row i;
    logits computed in two passes (max/sum, then P·v into a shared-memory accumulator row)."""
    N, ctas = g.N, B * g.nW * heads
    pt = window_patterns(g, heads, d, elem)
    ld = window_load_counts(pt, d, 3)
    region = 2 if g.shift else 0
    ffma = alu = mem = lsu = 0.0
    for ways, (bias_lines, _), (tok_lines, _) in zip(pt["rows"], pt["bias_rows"], pt["by_token"]):
        per_j_dot = dict(ffma=d, lds=2 * d, lsu=d * (ways + 1))
        ffma += N * (3 * d)
        mem += N * (2 * per_j_dot["lds"] + 2 + 2 * region + 3 * d) + d + 2
        lsu += N * (2 * per_j_dot["lsu"] + 2 * bias_lines + 2 * region + d * (2 * ways + 1)) + d * ways + tok_lines + 1
        alu += N * (3 * d + 2 * EXP_ALU + 30)
    out_lines, out_sectors = pt["out"]
    lsu += pt["element_warps"] * (2 + pt["sts"] + out_lines)
    mem += pt["element_warps"] * 3
    alu += pt["element_warps"] * DIV64
    pixels, bias = B * g.H * g.W, heads * N * N * elem
    l2_cta = ld["l2"] + N * (ceil_div(N * elem, 32) + 1) * 32 + pt["element_warps"] * out_sectors * 32 + N * 32
    return Launch("window_attention", "forward_kernel", (ctas, 1, 1), (wa_block_threads(N), 1, 1),
                  dyn_smem=wa_smem_bytes(N, d, 4, 0), flops=4.0 * ctas * N * N * d,
                  min_bytes=pixels * 4 * heads * d * elem + pixels * heads * 4 + bias,
                  ffma=ctas * ffma, alu=ctas * (alu + ld["alu"]), mufu=ctas * pt["row_warps"] * N * 2,
                  mem=ctas * (mem + ld["mem"]), lsu=ctas * (lsu + ld["lsu"]), l2=ctas * l2_cta,
                  gld=ctas * (ld["gld"] + pt["row_warps"] * 2 * N), ilp=2,  # q, k, v; the bias twice
                  warps_busy=pt["row_warps"],
                  note=f"logits twice, 3 shared accesses per P·v FMA, bias read by rows "
                       f"({pt['bias_rows'][0][0]:.0f} lines per request), {wa_block_threads(N)} threads for N = {N}")


MMA_MAX_TOKENS, MMA_MAX_HEAD_DIM, MMA_ROW_PAD = 64, 64, 8  # window_attention_mma.cuh


def mma_fits(N: int, d: int, elem: int) -> bool:  # window_attention_cuda.cu: forward_on_tensor_cores
    return elem == 2 and N <= MMA_MAX_TOKENS and d <= MMA_MAX_HEAD_DIM


def mma_tile_loads(g: WindowGrid, heads: int, d: int, elem: int) -> Tuple[int, int, float, float]:
    """window_attention_mma.cuh: mma_load_tiles, for one [Np, dp] tile, Np·dp/vec chunks of vec elements a
    thread (vec as vector_width for aligned tensors): vec, warp requests, lines and sectors a request."""
    Np, dp = ceil_div(g.N, 16) * 16, ceil_div(d, 16) * 16
    vec = vector_width(d, elem)
    pix = [g.pixel(g.nW // 2, t) for t in range(g.N)]
    chunks = dp // vec
    lanes = [[(pix[min(e // chunks, g.N - 1)] * 3 * heads) * d + (e % chunks) * vec for e in range(s, s + 32)]
             for s in range(0, Np * chunks, 32)]
    lines, sectors = mean_access(lanes, elem)  # element offsets; a vec-element access stays in its line
    return vec, ceil_div(Np * chunks, 32), lines, sectors


def mma_bias_ld(N: int) -> int:  # window_attention_mma.cuh: mma_bias_ld (elements)
    return ceil_div(N, 64) * 64 + 8 if N % 8 == 0 else N


def mma_bias_grad_ld(N: int) -> int:  # window_attention_mma.cuh: mma_bias_grad_ld (floats)
    return ceil_div(N, 32) * 32 + 8


def mma_bias_bytes(N: int) -> int:  # window_attention_mma.cuh: the bias region, 16 bytes to align the tile
    return ceil_div(N * mma_bias_ld(N) * 2, 16) * 16 + 16


def mma_backward_bias_ld(N: int) -> int:  # window_attention_mma_backward.cuh: mma_backward_bias_ld (elements)
    return mma_bias_ld(N) if N % 8 == 0 else ceil_div(N, 16) * 16 + 8


def mma_backward_bias_bytes(N: int) -> int:  # window_attention_mma_backward.cuh: the backward's bias region
    return mma_bias_bytes(N) if N % 8 == 0 else ceil_div(N * mma_backward_bias_ld(N) * 2, 16) * 16


def mma_backward_probabilities_bytes(N: int) -> int:  # window_attention_mma_backward.cuh: MmaBackwardLayout
    """The P and dS tiles, which stage the bias (mma_load_bias's copy) and hold the bias gradient [N,
    mma_bias_grad_ld(N)] (float) at the end."""
    Np = ceil_div(N, 16) * 16
    return max(2 * Np * (Np + MMA_ROW_PAD) * 2, mma_bias_bytes(N), N * mma_bias_grad_ld(N) * 4)


def mma_backward_bias_load(N: int, warps: int) -> dict:
    """window_attention_mma_backward.cuh: mma_backward_load_bias — mma_load_bias's copy; where N is not a multiple
    of 8 into the P and dS tiles, then a value a thread a step into the padded tile, −inf past key N (a warp: at
    most 64 contiguous bytes read, one wavefront; stored into at most two rows, two wavefronts), the (row,
    column) pair stepped."""
    load = mma_bias_load(N, warps)
    if N % 8 == 0:
        return load
    steps = ceil_div(N * mma_backward_bias_ld(N), 32)
    return dict(load, alu=load["alu"] + steps * (INDEX_STEP + 6), mem=load["mem"] + steps * 2,
                lsu=load["lsu"] + steps * 3)


def fragment_ways(ld: int, elem: int, width: int = 1) -> float:
    """Wavefronts of a warp's shared-memory access in accumulator-fragment order (lane 4g + t: row g, columns
    2t, 2t + 1 of an 8-column tile) to an array of elem-byte values with rows ld apart, `width` consecutive
    values an access (a column pair: 2); the mean over the 8 tiles of a row band and the accesses of a tile."""
    ways = [bank_ways([((g * ld + 8 * nt + 2 * t + e) * elem) // 4 for g in range(8) for t in range(4)])
            for nt in range(8) for e in range(0, 2, width)]
    return sum(ways) / len(ways)


def mma_bias_load(N: int, warps: int) -> dict:
    """window_attention_mma.cuh: mma_load_bias — a head's N² 16-bit biases into shared memory by block_copy:
    16 bytes a thread (a warp: 4 lines read, 4 wavefronts stored), up to BLOCK_COPY_IN_FLIGHT of a thread's
    loaded before any is stored (`batched`, waited on `rounds` times a warp), the values before the first and
    after the last 16-byte boundary one a thread (a warp each)."""
    chunks = N * N * 2 // 16
    chunk_warps = ceil_div(chunks, 32)
    rounds = ceil_div(chunks, 32 * warps * BLOCK_COPY_IN_FLIGHT)
    return dict(alu=(chunk_warps + 2) * 8, mem=(chunk_warps + 2) * 2, lsu=chunk_warps * 8 + 2 * 2,
                gld=chunk_warps + 2, batched=(chunk_warps, chunk_warps / (warps * rounds)))


def batched_requests(*groups: Tuple[float, float]) -> Tuple[float, float]:
    """Launch's (gld_batched, batch) for groups of (requests, issued this many at a time): the same serial count."""
    requests = sum(n for n, _ in groups)
    return requests, requests / sum(n / batch for n, batch in groups) if requests else 1.0


def logit_alu(g: WindowGrid, settled: bool, keys_tested: bool = True) -> int:
    """window_attention_mma.cuh: mma_logits and the softmax, issue slots an accumulator element beyond its
    shared-memory loads and ex2: with the bias alone settled once (kSettled, the forward), the key's bound (a
    compare shared by two elements, a select), the bias's conversion, the FFMA of scale·S + bias, the row's max,
    the FFMA of the exponent, the row's sum; in shifted windows (settled: the bias and the region penalty) the
    region ids' compare, a select and an add more; the general offset (null tests, mask addresses, compare,
    select, adds: an explicit mask, and the backward) about twice the bias alone (its unrolled copy is 20
    instructions an element in the sm_90 SASS, the shifted one 6); 2 fewer without the key's bound
    (kKeysPadded, the backward: its compare, select and branch region)."""
    return ((7 if not g.shift else 10) if settled else 14) - (0 if keys_tested else 2)


def mma_region_loads(g: WindowGrid, Np: int, warps: int) -> int:
    """window_attention_mma.cuh: mma_logits in shifted windows — the region ids of a lane's two rows read once
    (8 rows a warp: one wavefront each) and of its key pair once a key tile (one 8-byte load, 4 pairs a warp:
    one wavefront); warp instructions = wavefronts, per CTA."""
    return warps * (2 + Np // 8) if g.shift else 0


def mma_forward_kernel(B: int, g: WindowGrid, heads: int, d: int, elem: int) -> Launch:
    """window_attention_mma.cuh: one CTA of Np/16 warps per (window, head); per warp, 16 query rows:
    S = Q·Kᵀ and O = P·V on mma.sync.m16n8k16 from ldmatrix fragments, the logits' offsets and softmax on the
    accumulator registers (Np/2 elements a lane), the output staged through shared memory."""
    N, ctas = g.N, B * g.nW * heads
    Np, dp = ceil_div(N, 16) * 16, ceil_div(d, 16) * 16
    ld_smem = dp + MMA_ROW_PAD
    warps = Np // 16
    pt = window_patterns(g, heads, d, elem)
    # load: the head's bias (mma_load_bias), then the q, k, v tiles (int32 index math; a chunk of each a thread
    # in flight at once)
    bias = mma_bias_load(N, warps)
    vec, load_warps, q_lines, q_sectors = mma_tile_loads(g, heads, d, elem)
    load = dict(alu=load_warps * (INDEX_STEP + 16) + warps * 2 * DIV32 + bias["alu"] + warps * 4 * 10,
                mem=load_warps * 6 + bias["mem"] + 2 * warps,
                lsu=load_warps * 3 * (q_lines + vec * elem // 4) + bias["lsu"] + 2 * warps,
                l2=load_warps * 3 * q_sectors * 32 + N * N * elem, gld=load_warps * 3 + bias["gld"])
    # per warp: ldmatrix (A ×4: 4 wavefronts; B ×2: 2), mma (S over the key tiles that hold a key), logits
    # (offsets from shared memory), softmax
    key_tiles = ceil_div(N, 8)
    hmma = warps * (dp // 16 * key_tiles + Np // 16 * dp // 8)
    ldsm = warps * (dp // 16 * (1 + key_tiles) + Np // 16 * dp // 8)
    ldsm_lsu = warps * (dp // 16 * (4 + 2 * key_tiles) + Np // 16 * dp // 8 * 2)
    elements = warps * Np // 2  # accumulator elements a lane holds, per warp, summed over the CTA's warps
    region = mma_region_loads(g, Np, warps)
    logits = dict(alu=elements * logit_alu(g, settled=True) + warps * 40,
                  mem=elements + region, mufu=elements + 2 * warps,
                  lsu=elements * fragment_ways(mma_bias_ld(N), 2) + region)  # the bias in fragment order
    pack = Np // 16 * 4 * 2 * warps  # F2F conversions of P
    # output: staging stores (a column pair a 4-byte store), then 16·d/vec chunks a warp
    out_warps = warps * ceil_div(16 * d // vec, 32)
    out_lines = 16 * d * elem / 128 / max(1, out_warps // warps)
    store = dict(alu=out_warps * (INDEX_STEP + 12) + warps * 2 * DIV32 + warps * dp // 8 * 4 * 4,
                 mem=out_warps * 2 + warps * dp // 8 * 2,
                 lsu=out_warps * (vec * elem // 4 + out_lines) + warps * dp // 8 * 2 * 2,
                 l2=B * g.H * g.W * heads * d * elem / ctas)
    pixels, bias_bytes = B * g.H * g.W, heads * N * N * elem
    tiles_batched, tiles_batch = batched_requests((load_warps * 3, 3), bias["batched"])
    l2_cta = load["l2"] + store["l2"] + N * 32
    return Launch("window_attention", "mma_forward_kernel", (ctas, 1, 1), (warps * 32, 1, 1),
                  dyn_smem=3 * Np * ld_smem * 2 + mma_bias_bytes(N) + Np * 12, flops=4.0 * ctas * N * N * d,
                  min_bytes=pixels * 4 * heads * d * elem + pixels * heads * 4 + bias_bytes,
                  hmma=ctas * hmma,
                  alu=ctas * (load["alu"] + logits["alu"] + pack + store["alu"] + hmma),
                  mufu=ctas * logits["mufu"], mem=ctas * (load["mem"] + ldsm + logits["mem"] + store["mem"]),
                  lsu=ctas * (load["lsu"] + ldsm_lsu + logits["lsu"] + store["lsu"]), l2=ctas * l2_cta,
                  gld=ctas * load["gld"], gld_batched=ctas * tiles_batched, batch=tiles_batch, ilp=2,
                  phased=True,
                  note=f"{warps} warps a (window, head), {hmma} mma.sync a CTA; N padded {N}→{Np}, d {d}→{dp}; "
                       f"{vec * elem}-byte copies")


BACKWARD_BLOCKS_PER_SM = 3  # window_attention_mma_backward.cuh: kBackwardBlocksPerSm


def mma_backward_groups(windows: int, heads: int) -> int:  # window_attention_mma_backward.cuh
    wanted = min(windows, max(64, ceil_div(BACKWARD_BLOCKS_PER_SM * SMS_SM90, heads)))
    return ceil_div(windows, ceil_div(windows, wanted)) if wanted else 0


def mma_backward_kernel(B: int, g: WindowGrid, heads: int, d: int, elem: int) -> Launch:
    """window_attention_mma_backward.cuh: min(B·nW, max(64, 3·SMs/heads))·heads CTAs of Np/16 warps, each
    walking its windows: per window q, k, v, dO loaded (vec-element copies, a chunk of each a thread in flight
    at once), lse and D per token (adjacent threads a token, vec-element copies, shuffles), then per warp S and
    dP (mma), P, dS, the bias gradient in registers, P and dS tiles (a column pair a 4-byte store), dq
    (mma), and over keys dv, dk (mma, transposed A fragments); dq, dk, dv staged in shared memory and copied
    out in vec-element copies."""
    N, windows = g.N, B * g.nW
    groups = mma_backward_groups(windows, heads)
    ctas, per_cta = groups * heads, ceil_div(windows, groups)
    Np, dp = ceil_div(N, 16) * 16, ceil_div(d, 16) * 16
    warps = Np // 16
    vec, load_warps, q_lines, q_sectors = mma_tile_loads(g, heads, d, elem)
    # lse a thread a token; D_i = dO_i·o_i (mma_row_deltas): `lanes` threads a token, vec channels each a
    # step, shuffles
    pix = [g.pixel(g.nW // 2, t) for t in range(N)]
    lse_warps = ceil_div(Np, 32)
    lse_lines, lse_sectors = mean_access([[pix[min(t, N - 1)] * heads for t in range(s, s + 32)]
                                          for s in range(0, Np, 32)], 4)
    chunks = d // vec
    lanes = min(32, 1 << (chunks - 1).bit_length())
    steps = ceil_div(chunks, lanes)
    row_warps = ceil_div(Np * lanes, 32)
    o_lines, _ = mean_access([[(pix[min(e // lanes, N - 1)] * heads) * d + (e % lanes) * vec for e in range(s, s + 32)]
                              for s in range(0, Np * lanes, 32)], elem)
    shuffles = (lanes - 1).bit_length()
    load = dict(alu=load_warps * 4 * (INDEX_STEP + 16) + warps * 2 * DIV32
                + row_warps * (steps * (3 * vec + 16) + shuffles * 2 + 20) + lse_warps * 12 + warps * 40,
                mem=load_warps * 4 * 2 + row_warps * (2 * steps + shuffles + 1) + lse_warps * 3 + 3 * warps,
                lsu=load_warps * 4 * (q_lines + vec * elem // 4)
                + row_warps * (steps * (o_lines + vec * elem // 4) + shuffles + 1) + lse_warps * (2 + lse_lines)
                + 3 * warps,
                l2=load_warps * 4 * q_sectors * 32 + Np * d * elem + lse_warps * lse_sectors * 32,
                gld=load_warps * 4 + row_warps * steps + lse_warps)
    # S and dP over the key tiles that hold a key (7 of 8 at N = 49), half the key tiles at a time (their A
    # fragments loaded once a half), then dq, dv and dk with A fragments from the dS, P and dS tiles
    key_tiles = ceil_div(N, 8)
    hmma = warps * (2 * dp // 16 * key_tiles + 3 * Np // 16 * dp // 8)
    halves = ceil_div(key_tiles, 4)
    ldsm = warps * (2 * dp // 16 * (halves + key_tiles) + 3 * Np // 16 * (1 + dp // 8))
    ldsm_lsu = warps * (2 * dp // 16 * (4 * halves + 2 * key_tiles) + 3 * Np // 16 * (4 + 2 * dp // 8))
    elements = warps * key_tiles * 4
    region = mma_region_loads(g, Np, warps)
    # per pair of elements (a column pair): the bias (one 4-byte load) and a 4-byte store to each of P and dS;
    # each in fragment order (bank conflicts from the rows' strides); the bias gradient an FADD into registers.
    # The key tiles past them: zeros into P and dS, a column pair a store.
    element_ways = (fragment_ways(mma_backward_bias_ld(N), 2, width=2) + fragment_ways(Np + MMA_ROW_PAD, 2, width=2)
                    * 2) / 2
    zeros = warps * (Np // 8 - key_tiles) * 2 * 2
    elementwise = dict(alu=elements * (17 + logit_alu(g, settled=False, keys_tested=False)) + zeros,
                       mem=elements * 3 // 2 + region + zeros, mufu=elements,
                       lsu=elements * element_ways + region + zeros * fragment_ways(Np + MMA_ROW_PAD, 2, width=2))
    pack = 2 * (Np // 16) * 4 * 2 * warps
    staged = warps * 3 * (dp // 8) * 2  # 4-byte shared stores (column pairs) of dq, dk, dv
    out_warps = 3 * ceil_div(N * d // vec, 32)  # then vec-element copies out
    out_lines = 32 * vec * elem / 128
    out = dict(alu=staged * 4 + out_warps * (INDEX_STEP + 12) + warps * 2 * DIV32, mem=staged + 2 * out_warps,
               lsu=staged * 2 + out_warps * (vec * elem // 4 + out_lines),
               l2=3 * N * d * elem)
    window = {k: load.get(k, 0) + elementwise.get(k, 0) + out.get(k, 0) for k in ("alu", "mem", "lsu", "l2", "gld")}
    window["alu"] += pack + hmma
    window["mem"] += ldsm
    window["lsu"] += ldsm_lsu
    # once a CTA: the head's bias (mma_backward_load_bias); at the end the bias gradient's registers into a
    # shared tile (8-byte pairs in fragment order, 16 a lane), then its partial stored (4-byte values, one a
    # thread a step: a warp reads and writes a line)
    bias, nn_warps = mma_backward_bias_load(N, warps), ceil_div(N * N, 32)
    grad_stores = warps * 16
    cta = dict(alu=bias["alu"] + grad_stores * 4 + nn_warps * (INDEX_STEP + 4),
               mem=bias["mem"] + grad_stores + nn_warps * 2,
               lsu=bias["lsu"] + grad_stores * fragment_ways(mma_bias_grad_ld(N), 4, width=2) + nn_warps * 2,
               l2=N * N * (2 + 4), gld=bias["gld"])
    layout = 4 * Np * (dp + MMA_ROW_PAD) * 2 + mma_backward_probabilities_bytes(N) + mma_backward_bias_bytes(N) \
        + Np * 8 + Np * 12
    pixels = B * g.H * g.W
    io = pixels * heads * d * elem * (3 + 2 + 3) + pixels * heads * 4  # q, k, v, o, dO read; dq, dk, dv; lse
    return Launch("window_attention", "mma_backward_kernel", (ctas, 1, 1), (warps * 32, 1, 1), dyn_smem=layout,
                  flops=10.0 * windows * heads * N * N * d,
                  min_bytes=io + 2 * heads * N * N * elem, dram=io + ctas * N * N * 4 * 2,  # the bias once; partials
                  hmma=ctas * per_cta * hmma, alu=ctas * (per_cta * window["alu"] + cta["alu"]),
                  mufu=ctas * per_cta * elementwise["mufu"], mem=ctas * (per_cta * window["mem"] + cta["mem"]),
                  lsu=ctas * (per_cta * window["lsu"] + cta["lsu"]), l2=ctas * (per_cta * window["l2"] + cta["l2"]),
                  gld=ctas * (per_cta * window["gld"] + cta["gld"]),
                  **dict(zip(("gld_batched", "batch"),
                             batched_requests((ctas * per_cta * load_warps * 4, 4),
                                              (ctas * bias["batched"][0], bias["batched"][1])))), ilp=2, phased=True,
                  note=f"{ctas} CTAs of {warps} warps ({per_cta} windows each), {hmma} mma.sync a window; "
                       f"dq, dk, dv stored from the accumulators")


def backward_kernel(B: int, g: WindowGrid, heads: int, d: int, elem: int) -> Launch:
    """window_attention_cuda.cu: window_attention_backward_cuda — min(B·nW, 64)·heads CTAs, each walking its
    windows; rows pass (dq, bias gradient RMW in global memory), then columns pass (dk, dv); dS recomputed."""
    N, windows = g.N, B * g.nW
    groups = min(windows, 64)  # window_attention.h: backward_groups
    ctas, per_cta = groups * heads, ceil_div(windows, groups)
    pt = window_patterns(g, heads, d, elem)
    ld = window_load_counts(pt, d, 4)
    region = 2 if g.shift else 0
    ffma = alu = mem = lsu = 0.0
    for ways, (bias_r, _), (bias_c, _), (tok, _) in zip(pt["rows"], pt["bias_rows"], pt["bias_cols"], pt["by_token"]):
        dots = dict(lds=4 * d, lsu=2 * d * (ways + 1))  # the two row dots of logit_grad_at
        rows = dict(mem=dots["lds"] + 3 + region + 2 + 2 + 3 * d,
                    lsu=dots["lsu"] + bias_r + region + 2 + 2 * bias_r + d * (2 * ways + 1))
        cols = dict(mem=dots["lds"] + 3 + region + 2 + 6 * d,
                    lsu=dots["lsu"] + bias_c + region + 2 + 2 * d * (2 * ways + 1))
        ffma += N * 7 * d + d
        mem += N * (rows["mem"] + cols["mem"]) + 2 * d + 4
        lsu += N * (rows["lsu"] + cols["lsu"]) + d * (ways + tok) + 2 * tok
        alu += N * (2 * (4 * d + 2 * EXP_ALU + 30))
    out_lines, out_sectors = pt["out"]
    lsu += pt["element_warps"] * 3 * (2 + pt["sts"] + out_lines)
    mem += pt["element_warps"] * 9
    alu += pt["element_warps"] * 3 * DIV64
    l2_window = (ld["l2"] + N * (ceil_div(N * elem, 32) + 1) * 32 + 3 * pt["element_warps"] * out_sectors * 32
                 + N * (d * elem + 32) + 1.5 * N * N * 32)  # o rows, lse; bias-gradient RMW sector per element
    pixels = B * g.H * g.W
    io = pixels * heads * d * elem * (3 + 2 + 3) + pixels * heads * 4  # q, k, v, o, dO read; dq, dk, dv; lse
    return Launch("window_attention", "backward_kernel", (ctas, 1, 1), (wa_block_threads(N), 1, 1),
                  dyn_smem=wa_smem_bytes(N, d, 6, 2), flops=10.0 * windows * heads * N * N * d,
                  min_bytes=io + 2 * heads * N * N * elem, dram=io + ctas * N * N * 4 * 2,  # the bias once; partials
                  ffma=ctas * per_cta * ffma, alu=ctas * per_cta * (alu + ld["alu"]),
                  mufu=ctas * per_cta * pt["row_warps"] * N * 2, mem=ctas * per_cta * (mem + ld["mem"]),
                  lsu=ctas * per_cta * (lsu + ld["lsu"]), l2=ctas * per_cta * l2_window,
                  # loads: the bias in both passes and its gradient's read-modify-write; o and lse
                  gld=ctas * per_cta * (ld["gld"] + pt["row_warps"] * (3 * N + d + 1)),
                  ilp=2, warps_busy=pt["row_warps"],
                  note=f"{ctas} CTAs of {wa_block_threads(N)} threads ({per_cta} windows each); dS recomputed "
                       f"twice, bias-gradient RMW in global memory by rows")


def wa_dims(p: dict) -> Tuple[int, WindowGrid, int, int]:
    return p["B"], WindowGrid(p["H"], p["W"], p["window"], p["shift"]), p["heads"], p["C"] // p["heads"]


def plain_window_attention(dev: Device, p: dict, elem: int, backward: bool) -> float:
    """attnkern.bench.window_attention.seed_branch(use_sdpa=True), the attention part: roll and window_partition
    copies of x (the qkv Linear then writes q, k, v in window order, which SDPA reads as strided views), the
    bias (+ shift mask) materialised as a [B·nW, heads, N, N] attn_mask (also when N is not a multiple of 16,
    which the memory-efficient kernel needs), SDPA, then the output's transpose, window_reverse and roll-back
    copies; backward: SDPA backward (2.5× the forward's FLOPs) writing the mask gradient, its sum over
    windows, and the same five copies of the gradients."""
    B, g, heads, d = wa_dims(p)
    N, pairs = g.N, B * g.nW * heads
    qkv, out = B * g.H * g.W * 3 * heads * d * elem, B * g.H * g.W * heads * d * elem
    mask = pairs * N * N * 4 if (g.shift or N % 16) else heads * N * N * 4
    flops = 4.0 * pairs * N * N * d
    t = 5 * plain_ew(dev, 2 * out) + (plain_ew(dev, 2 * mask) if mask > heads * N * N * 4 else 0)
    if not backward:
        return t + plain_sdpa(dev, flops, qkv + out + mask, elem)
    return t + plain_sdpa(dev, 2.5 * flops, 2 * qkv + 2 * out + 2 * mask, elem) + plain_ew(dev, mask)


def wa_forward(p: dict, elem: int) -> List[Launch]:
    B, g, heads, d = wa_dims(p)
    if mma_fits(g.N, d, elem):
        return [mma_forward_kernel(B, g, heads, d, elem)]
    return [forward_kernel(B, g, heads, d, elem)]


SUM_SLICES, SUM_COLUMNS = 16, 2  # window_attention_cuda.cu: kSumSlices, kSumColumns


def sum_bias_partials_kernel(groups: int, heads: int, N: int, elem: int) -> Launch:
    """window_attention_cuda.cu: sum_bias_partials — the [groups, heads·N·N] float partials summed over the
    groups into the bias dtype: blocks of 32·SUM_COLUMNS elements × SUM_SLICES slices of the groups, a thread
    walking its slice's groups with SUM_COLUMNS elements 32 apart (independent loads; a warp reads a line of
    one group for each), then the slices' sums added from shared memory and the elements written."""
    elements = heads * N * N
    span = 32 * SUM_COLUMNS
    blocks, per_slice = ceil_div(elements, span), ceil_div(groups, SUM_SLICES)
    w = blocks * SUM_SLICES
    final_warps = blocks * SUM_COLUMNS  # a warp adds the slices' sums of 32 elements
    store_lines = ceil_div(32 * elem, 128)
    return Launch("window_attention", "sum_bias_partials_kernel", (blocks, 1, 1), (32, SUM_SLICES, 1),
                  static_smem=SUM_SLICES * span * 4, dram=groups * elements * 4 + elements * elem,  # intermediates
                  alu=w * (per_slice * SUM_COLUMNS * 3 + 16) + final_warps * (SUM_SLICES * 2 + 6),
                  mem=w * (per_slice + 1) * SUM_COLUMNS + final_warps * (SUM_SLICES + 1),
                  lsu=w * (per_slice + 1) * SUM_COLUMNS + final_warps * (SUM_SLICES + store_lines),
                  l2=groups * elements * 4 + elements * elem, gld=w * per_slice * SUM_COLUMNS,
                  ilp=4 * SUM_COLUMNS,  # SASS (sm_90): the group loop unrolled by 4, its 4 × 2 loads before the adds
                  note=f"{blocks} blocks of {span} elements × {SUM_SLICES} slices of the {groups} groups")


def wa_backward(p: dict, elem: int) -> List[Launch]:
    B, g, heads, d = wa_dims(p)
    if mma_fits(g.N, d, elem):  # its own groups; every block writes its whole partial: no zeros
        groups = mma_backward_groups(B * g.nW, heads)
        return [mma_backward_kernel(B, g, heads, d, elem), sum_bias_partials_kernel(groups, heads, g.N, elem)]
    groups = min(B * g.nW, 64)
    partial = groups * heads * g.N * g.N * 4
    return [aten_call("window_attention", "ATen: zeros (partial bias gradients)", lambda dev: plain_ew(dev, partial)),
            backward_kernel(B, g, heads, d, elem), sum_bias_partials_kernel(groups, heads, g.N, elem)]


OPS += [
    Op("window_attention", "window_attention", wa_forward, wa_backward,
       lambda d, p, e: plain_window_attention(d, p, e, False), lambda d, p, e: plain_window_attention(d, p, e, True)),
]


# ---- region_conv (csrc/region_conv/region_conv_cuda.cu, region_conv.h) ------------------------------
# The guide is taken to select regions uniformly at random per pixel: lanes of a warp gather from
# distinct_regions(32, R) regions' filters or outputs.


def distinct_regions(lanes: int, R: int) -> float:
    """Expected number of distinct regions among `lanes` pixels with uniformly random regions."""
    return R * (1 - (1 - 1 / R) ** lanes)


def rc_dims(p: dict) -> Tuple[int, int, int, int, int, int, int]:
    return p["B"], p["Cin"], p["Cout"], p["k"], p["R"], p["H"], p["W"]


# Tiled products (region_conv_cuda.cu: region_product): 64 × 64 tiles of 256 threads, 4 × 4 outputs a thread,
# kStep = 16 reduction steps staged in shared memory with the next step's operands prefetched into registers.
RC_TILE, RC_STEP, RC_THREADS, RC_BUCKET_THREADS, RC_PRODUCT_SMEM = 64, 16, 256, 256, 9728


def rc_gather_lines(R: int, elem: int, scattered: bool) -> Tuple[float, float]:
    """(lines, sectors) of one staging load of 16 lanes × 2 rows: pixels of one region's list (about R apart:
    `scattered`) or 16 consecutive pixels."""
    if not scattered:
        lines, sectors = global_access([p * elem for p in range(16)])
    else:
        lines, sectors = global_access([p * R * elem for p in range(16)])
    return 2.0 * lines, 2.0 * sectors


def product_launch(kernel: str, grid: Tuple[int, int, int], active: float, steps: float, a: Tuple[float, float],
                   b: Tuple[float, float], flops: float, min_bytes: float, epilogue: Tuple[float, float, float],
                   gather_alu: float, note: str) -> Launch:
    """One tiled product: `active` blocks of 8 warps each run `steps` reduction steps; per warp and step 16·16
    FFMAs, 2·16 4-vector shared loads (A broadcast: 1 wavefront, B: 2), 8 shared stores (A's 2-way
    conflicted), 8 global loads (`a`, `b`: lines and sectors of each of the 4 A and 4 B staging loads) and
    `gather_alu` index instructions; `epilogue` = (mem, lsu, l2 bytes) per warp."""
    warp_steps = active * 8 * steps
    warps = active * 8
    return Launch("region_conv", kernel, grid, (RC_THREADS, 1, 1), static_smem=RC_PRODUCT_SMEM, flops=flops,
                  min_bytes=min_bytes, ffma=warp_steps * 256, alu=warp_steps * (gather_alu + 24) + warps * 60,
                  mem=warp_steps * (32 + 8 + 8) + warps * epilogue[0],
                  lsu=warp_steps * (16 * 3 + 4 * 2 + 4 + 4 * (a[0] + b[0])) + warps * epilogue[1],
                  l2=warp_steps * 4 * (a[1] + b[1]) * 32 + warps * epilogue[2], gld=warp_steps * 8, ilp=4,
                  ctas_active=math.ceil(active), note=note)


def rc_region_tiles(B: int, R: int, L: int) -> Tuple[int, float]:
    """(blocks launched, blocks with a tile) of a bucketed product: ⌈L/64⌉ + r per sample; Σ_r ⌈n_r/64⌉ with
    n_r = L/r (uniform guide)."""
    return B * (ceil_div(L, RC_TILE) + R), B * R * math.ceil(L / R / RC_TILE)


def bucket_pixels_kernel(B: int, R: int, L: int, elem: int) -> Launch:
    """region_conv_cuda.cu: bucket_pixels — one block per sample, each thread a run of ⌈L/256⌉ pixels: the
    argmax (regions written to a scratch array), then per region a count and a scatter over the run (the
    scratch re-read: from L2 the first time, L1 after) and a block-wide scan (8 levels, 2 barriers each).
    Lanes walk pixels a run apart; a thread's loads over its run are independent (ilp = run)."""
    run, w = ceil_div(L, RC_BUCKET_THREADS), B * 8
    guide_lines, guide_sectors = global_access([t * run * elem for t in range(32)])
    int_lines, int_sectors = global_access([t * run * 4 for t in range(32)])
    scan = dict(alu=8 * 6 + 12, mem=8 * 3 + 3)  # per region: the scan's levels, offsets
    return Launch("region_conv", "bucket_pixels_kernel", (B, 1, 1), (RC_BUCKET_THREADS, 1, 1), static_smem=1024,
                  min_bytes=B * R * L * elem + 3 * B * L * 4 + B * (R + 1) * 4,
                  alu=w * (run * 6 * R + R * (run * 8 + scan["alu"])), mem=w * (run * (R + 1) + R * (2 * run + scan["mem"])),
                  lsu=w * (run * R * guide_lines + run * int_lines + R * (2 * run * int_lines + scan["mem"])),
                  l2=w * (run * R * guide_sectors + 2 * run * int_sectors) * 32 + B * L * 4,
                  gld=w * (run * R + R * 2 * run), ilp=run,
                  note=f"one block per sample ({B} blocks), {R} scans of 256")


def forward_product_kernel(B: int, Cin: int, Cout: int, k: int, R: int, H: int, W: int, elem: int) -> Launch:
    """out[o, p] = Σ_k W_r[o, k]·X[k, p] over each region's pixels: A = filter rows (16 taps of 2 rows a warp),
    B = x at one tap of 16 of the region's pixels."""
    L, K = H * W, Cin * k * k
    blocks, active = rc_region_tiles(B, R, L)
    a = global_access([t * elem for t in range(16)] + [(K + t) * elem for t in range(16)])
    return product_launch("forward_product_kernel", (blocks, ceil_div(Cout, RC_TILE), 1),
                          active * ceil_div(Cout, RC_TILE), ceil_div(K, RC_STEP), a, rc_gather_lines(R, elem, True),
                          2.0 * B * Cout * L * K, (B * Cin * L + B * R * Cout * K + B * Cout * L) * elem + B * L * 4,
                          (16, 16 * 5, 16 * 5 * 32), 4 * 12 + 10,
                          f"x gathered at the region's pixels (about {R} apart)")


def grad_columns_product_kernel(B: int, Cin: int, Cout: int, k: int, R: int, H: int, W: int, elem: int) -> Launch:
    """dX[k, p] = Σ_o W_r[o, k]·grad[o, p] over each region's pixels (the columns' gradient, float32 [B, K, L])."""
    L, K = H * W, Cin * k * k
    blocks, active = rc_region_tiles(B, R, L)
    a = global_access([t * elem for t in range(32)])
    return product_launch("grad_columns_product_kernel", (blocks, ceil_div(K, RC_TILE), 1),
                          active * ceil_div(K, RC_TILE), ceil_div(Cout, RC_STEP), a, rc_gather_lines(R, elem, True),
                          2.0 * B * Cout * L * K, (B * Cout * L + B * R * Cout * K) * elem + B * K * L * 4 + B * L * 4,
                          (16, 16 * 5, 16 * 5 * 32), 4 * 6 + 4, "the columns' gradient stored, gathered pixels")


def columns_to_image_kernel(B: int, Cin: int, Cout: int, k: int, R: int, H: int, W: int, elem: int) -> Launch:
    """∂x[i, ih, iw] = Σ_{u, v} dX[(i, u, v), output pixel of the tap]: one thread per element of x, lanes on
    consecutive iw (coalesced rows of the float32 columns)."""
    L, K, per = H * W, Cin * k * k, Cin * H * W
    w = B * warps_of(per)
    lines, sectors = global_access([t * 4 for t in range(32)])
    return Launch("region_conv", "columns_to_image_kernel", (B * ceil_div(per, 256), 1, 1), (256, 1, 1),
                  min_bytes=B * K * L * 4 + B * per * elem, alu=w * (30 + k * 8 + k * k * 10), mem=w * (k * k + 1),
                  lsu=w * k * k * lines, l2=w * (k * k * sectors * 32 / k + elem * 32), gld=w * k * k, ilp=4,
                  note="one thread per element of x, k² taps")


def grad_filters_product_kernel(B: int, Cin: int, Cout: int, k: int, R: int, H: int, W: int, elem: int) -> Launch:
    """dW_r[o, k] = Σ_p grad[o, p]·X[k, p] over the region's pixels (L/r of them, in order): A = grad at 16 of
    the region's pixels, B = x at 16 consecutive taps of one pixel."""
    L, K = H * W, Cin * k * k
    blocks = B * R * ceil_div(K, RC_TILE)
    taps = [(i, u, v) for i in range(4) for u in range(k) for v in range(k)][:16]
    b = global_access([(i * H * W + (H // 2 + u) * W + W // 2 + v) * elem for i, u, v in taps])
    b = (2.0 * b[0], 2.0 * b[1])
    return product_launch("grad_filters_product_kernel", (blocks, ceil_div(Cout, RC_TILE), 1),
                          blocks * ceil_div(Cout, RC_TILE), ceil_div(math.ceil(L / R), RC_STEP),
                          rc_gather_lines(R, elem, True), b, 2.0 * B * Cout * L * K,
                          (B * Cout * L + B * Cin * L + B * R * Cout * K) * elem + B * L * 4,
                          (16, 16, 16 * 4 * 32), 4 * 12 + 20, f"a region's {L / R:.0f} pixels a block, gathered")


def guide_product_kernel(B: int, Cin: int, Cout: int, k: int, R: int, H: int, W: int, elem: int) -> Launch:
    """G_r partial = Σ_{o in a 64-channel slice} grad[o, p]·(W_r X)[o, p] at every pixel, every region: the
    r-fold product (all regions everywhere); x at one tap of 16 consecutive pixels."""
    L, K = H * W, Cin * k * k
    slices = ceil_div(Cout, RC_TILE)
    blocks = B * ceil_div(L, RC_TILE) * R * slices
    a = global_access([t * elem for t in range(16)] + [(K + t) * elem for t in range(16)])
    return product_launch("guide_product_kernel", (B * ceil_div(L, RC_TILE), R * slices, 1), blocks,
                          ceil_div(K, RC_STEP), a, rc_gather_lines(R, elem, False), 2.0 * B * R * Cout * L * K,
                          (B * Cin * L + B * R * Cout * K + B * Cout * L) * elem + B * R * slices * L * 4,
                          (16 + 4 * 4, 16 + 4 * 4 + 8, 16 * 4 * 32), 4 * 12 + 10,
                          f"every region at every pixel: {R}× the forward's products")


def guide_gradient_kernel(B: int, Cin: int, Cout: int, k: int, R: int, H: int, W: int, elem: int) -> Launch:
    """Per pixel: G_r = Σ of the slices' partials, stored once; then guide_gradient (region_conv.h)."""
    L, slices = H * W, ceil_div(Cout, RC_TILE)
    w = B * warps_of(L)
    return Launch("region_conv", "guide_gradient_kernel", (B * ceil_div(L, 256), 1, 1), (256, 1, 1),
                  min_bytes=B * R * slices * L * 4 + B * R * L * (4 + 2 * elem),
                  alu=w * (R * (slices + 2) * 4 + 3 * R * (6 + EXP_ALU)), mufu=w * 2 * R,
                  mem=w * R * (slices + 6), lsu=w * R * (slices + 6), l2=w * R * (slices * 4 + 4 + 3 * elem) * 32,
                  gld=w * R * (slices + 2), ilp=R, note="one thread per pixel")


def region_assign_kernel(B: int, R: int, C: int, L: int, elem: int) -> Launch:
    """region_conv_cuda.cu: region_assign_cuda — blocks of 32 pixels × 32 channels, 8 channel slices (as the
    backward's): each pixel's argmax once a block (warp 0), then the selected region's outputs copied, 4
    channels a warp."""
    tiles, channel_blocks = ceil_div(L, 32), ceil_div(C, 32)
    w, per_slice, per_sector = B * tiles * channel_blocks * 8, ceil_div(min(C, 32), 8), 32 // elem
    regions = distinct_regions(32, R)
    touched = B * C * L / per_sector * distinct_regions(per_sector, R) * 32  # outputs' sectors a warp pulls
    store_lines = ceil_div(32 * elem, 128)
    argmax = B * tiles * channel_blocks  # warp 0 of each block: R coalesced guide loads
    return Launch("region_conv", "region_assign_kernel", (B * tiles, channel_blocks, 1), (32, 8, 1),
                  static_smem=32 * 8,
                  min_bytes=B * R * L * elem + 2 * B * C * L * elem, dram=B * R * L * elem + B * C * L * elem + touched,
                  alu=w * (per_slice * 6 + 24) + argmax * R * 6, mem=w * (per_slice * 2 + 2) + argmax * R,
                  lsu=w * (per_slice * (regions + store_lines) + 2) + argmax * R,
                  l2=touched + B * C * L * elem + B * R * L * elem, gld=w * per_slice + argmax * R, ilp=2,
                  reuse_set=R * C * L * elem,
                  note=f"32 pixels × 32 channels a CTA, the argmax once a CTA; {regions:.1f} regions' "
                       f"planes a warp load")


def region_assign_backward_kernel(B: int, R: int, C: int, L: int, elem: int) -> Launch:
    """region_conv_cuda.cu: region_assign_backward — blocks of 32 pixels × 8 channel slices: one coalesced pass
    over outputs (their gradient written, G_r's shares summed), G_r once per region, then the guide's gradient."""
    tiles = ceil_div(L, 32)
    w = B * tiles * 8
    per_slice = ceil_div(C, 8)  # channels a warp walks per region
    return Launch("region_conv", "region_assign_backward_kernel", (B * tiles, 1, 1), (32, 8, 1),
                  static_smem=8 * 32 * 4 + 32 * 8,
                  flops=2.0 * B * R * C * L,
                  min_bytes=2 * B * R * C * L * elem + B * C * L * elem + 2 * B * R * L * elem + 2 * B * R * L * 4,
                  ffma=w * R * per_slice, alu=w * (R * (per_slice * 8 + 12) + 2 * R / 8 * (6 + EXP_ALU)),
                  mufu=w * 2 * R / 8, mem=w * (R * (per_slice * 3 + 3) + R),
                  lsu=w * (R * (per_slice * 3 + 3) + R), l2=w * (R * per_slice * 3 * elem + R) * 32,
                  gld=w * R * per_slice * 2, ilp=4, reuse_set=B * C * L * elem,
                  note=f"{B * tiles} blocks of 32 pixels × 8 channel slices")


def plain_region_assign(dev: Device, B: int, R: int, C: int, L: int, elem: int, backward: bool) -> float:
    """reference.region_assign: argmax, gather; backward: zeros + scatter into every region, Σ_c grad·outputs
    for every region (mul, sum), the softmax Jacobian (three small elementwise ops)."""
    out, outputs, guide = B * C * L * elem, B * R * C * L * elem, B * R * L * elem
    if not backward:
        return plain_ew(dev, guide + B * L * 8) + plain_ew(dev, 2 * out + B * L * 8 + out * distinct_regions(8, R))
    return (plain_ew(dev, outputs) + plain_ew(dev, out + outputs) + plain_ew(dev, 2 * outputs + out)
            + plain_ew(dev, outputs + guide) + 3 * plain_ew(dev, 3 * guide))


def plain_drconv(dev: Device, p: dict, elem: int, backward: bool) -> float:
    """reference.dynamic_region_conv: every region's convolution (conv2d with groups = B, R·Cout filters per
    group), then region_assign; backward: the convolution's data and weight gradients and region_assign's."""
    B, Cin, Cout, k, R, H, W = rc_dims(p)
    L = H * W
    flops = 2.0 * B * R * Cout * L * Cin * k * k
    nbytes = (B * Cin * L + B * R * Cout * Cin * k * k + B * R * Cout * L) * elem
    conv = plain_conv(dev, flops, nbytes, elem)
    return (2 * conv if backward else conv) + plain_region_assign(dev, B, R, Cout, L, elem, backward)


def drconv_forward(p: dict, elem: int) -> List[Launch]:
    B, Cin, Cout, k, R, H, W = rc_dims(p)
    return [bucket_pixels_kernel(B, R, H * W, elem), forward_product_kernel(B, Cin, Cout, k, R, H, W, elem)]


def drconv_backward(p: dict, elem: int) -> List[Launch]:
    B, Cin, Cout, k, R, H, W = rc_dims(p)
    return [bucket_pixels_kernel(B, R, H * W, elem),
            *(kernel(B, Cin, Cout, k, R, H, W, elem) for kernel in
              (grad_columns_product_kernel, columns_to_image_kernel, grad_filters_product_kernel,
               guide_product_kernel, guide_gradient_kernel))]


OPS += [
    Op("region_conv", "dynamic_region_conv", drconv_forward, drconv_backward,
       lambda d, p, e: plain_drconv(d, p, e, False), lambda d, p, e: plain_drconv(d, p, e, True)),
    Op("region_conv", "region_assign (outputs B×r×Cout×H×W)",
       lambda p, e: [region_assign_kernel(p["B"], p["R"], p["Cout"], p["H"] * p["W"], e)],
       lambda p, e: [region_assign_backward_kernel(p["B"], p["R"], p["Cout"], p["H"] * p["W"], e)],
       lambda d, p, e: plain_region_assign(d, p["B"], p["R"], p["Cout"], p["H"] * p["W"], e, False),
       lambda d, p, e: plain_region_assign(d, p["B"], p["R"], p["Cout"], p["H"] * p["W"], e, True)),
]


# ---- gating (csrc/gating/gating_cuda.cu, gating.h) --------------------------------------------------
PLANE_THREADS = 256  # gating_cuda.cu: kPlaneThreads


def ga_dims(p: dict) -> Tuple[int, int, int]:
    return p["B"], p["C"], p["H"] * p["W"]


def plane_launch(kernel: str, B: int, C: int, HW: int, elem: int, loads: int, stores: int, alu: int,
                 reductions: int, smem: int, min_bytes: float, note: str) -> Launch:
    """A one-CTA-per-(b, c)-plane kernel: a coalesced strided loop over the HW pixels with `loads` plane-sized
    loads and `stores` stores per pixel, then `reductions` block reductions (8 levels)."""
    planes = B * C
    lines, sectors = global_access([i * elem for i in range(32)])
    wi = planes * min(8, warps_of(HW)) * ceil_div(HW, PLANE_THREADS)
    red = planes * 8 * 8 * reductions
    return Launch("gating", kernel, (planes, 1, 1), (PLANE_THREADS, 1, 1), static_smem=smem, min_bytes=min_bytes,
                  alu=wi * alu + red * 6, mem=wi * (loads + stores) + red * 3,
                  lsu=wi * (loads + stores) * lines + red * 3, l2=wi * (loads + stores) * sectors * 32,
                  gld=wi * loads, ilp=4, note=note)


PIXEL_LANES = 32  # gating_cuda.cu: kPixelLanes
MIN_CHANNEL_SLICES, MAX_CHANNEL_SLICES, CHANNELS_PER_THREAD = 8, 32, 16  # gating_cuda.cu: kMinChannelSlices, …


def channel_slices(C: int) -> int:  # gating_cuda.cu: channel_slices
    slices = MIN_CHANNEL_SLICES
    while slices < MAX_CHANNEL_SLICES and slices * CHANNELS_PER_THREAD < C:
        slices *= 2
    return slices


def pixel_launch(kernel: str, B: int, C: int, HW: int, elem: int, loads: int, broadcast: int, ffma: int, alu: int,
                 extra_bytes: float, min_bytes: float, partial_bytes: int) -> Launch:
    """A kernel over pixels walking the C channel planes in channel_slices(C) slices: blocks of 32 pixels × 8–32
    slices (a warp: 32 consecutive pixels of one slice, coalesced), the slices' partials (`partial_bytes`
    each, in static shared memory) combined by the first slice."""
    total = B * HW
    slices = channel_slices(C)
    groups = ceil_div(total, PIXEL_LANES)
    per_slice = ceil_div(C, slices)
    w = groups * slices
    lines, sectors = global_access([i * elem for i in range(32)])
    combine = groups * 2 * (slices - 1)  # the first slice's warp reads the other slices' partials
    return Launch("gating", kernel, (capped_blocks(groups), 1, 1), (PIXEL_LANES, slices, 1),
                  static_smem=PIXEL_LANES * MAX_CHANNEL_SLICES * partial_bytes, min_bytes=min_bytes,
                  ffma=w * per_slice * ffma,
                  alu=w * (2 * DIV64 + 12 + per_slice * alu) + combine * 2, mem=w * (per_slice * (loads + broadcast) + 2)
                  + combine, lsu=w * (per_slice * (loads * lines + broadcast) + 2) + combine,
                  l2=w * per_slice * (loads * sectors + broadcast) * 32 + extra_bytes,
                  gld=w * per_slice * (loads + broadcast), ilp=4,
                  note=f"32 pixels × {slices} channel slices a CTA ({per_slice} channels a thread), {groups} CTAs")


WARP_PLANE_CHUNKS = 32 * 16  # gating_cuda.cu: kWarpPlaneChunks


def channel_pool_kernel(B: int, C: int, HW: int, elem: int) -> Launch:
    """gating_cuda.cu: channel_pool_cuda — planes of ≤ WARP_PLANE_CHUNKS vector chunks a warp each (chunks of
    vector_width(HW) elements, two shuffle reductions of 5 steps); larger planes a CTA each (two block
    reductions)."""
    min_bytes = B * C * HW * elem + 2 * B * C * elem
    vec = vector_width(HW, elem)
    if ceil_div(HW, vec) > WARP_PLANE_CHUNKS:
        return plane_launch("channel_pool_kernel", B, C, HW, elem, 1, 0, 6, 2, PLANE_THREADS * 4, min_bytes,
                            "one CTA per plane")
    planes = B * C
    steps = ceil_div(ceil_div(HW, vec), 32)  # a lane's chunks
    lines, sectors = global_access([i * vec * elem for i in range(32)])
    wi = planes * steps
    shuffles = planes * 2 * 5
    return Launch("gating", "channel_pool_warp_kernel", (warp_blocks(planes), 1, 1), (256, 1, 1), min_bytes=min_bytes,
                  alu=wi * (6 + 3 * vec) + shuffles * 3 + planes * 12,
                  mem=wi + shuffles + 2 * planes, lsu=wi * lines + shuffles + 2 * planes, l2=wi * sectors * 32,
                  gld=wi, ilp=min(steps, 4),
                  note=f"a warp per plane: {steps} {vec}-element chunks a lane, shuffle reductions")


def channel_pool_backward_kernel(B: int, C: int, HW: int, elem: int) -> Launch:
    return plane_launch("channel_pool_backward_kernel", B, C, HW, elem, 2, 1, 6, 1, PLANE_THREADS * 8,
                        2 * B * C * HW * elem + 3 * B * C * elem, "x read twice (ties, then gradient)")


def spatial_pool_kernel(B: int, C: int, HW: int, elem: int) -> Launch:
    x = B * C * HW * elem
    return pixel_launch("spatial_pool_kernel", B, C, HW, elem, 1, 1, 0, 8, 2 * B * HW * elem * 32 / 4,
                        x + B * C * elem + 2 * B * HW * elem, partial_bytes=8)  # sum and max (float)


def spatial_pool_weights_kernel(B: int, C: int, HW: int, elem: int) -> Launch:
    x = B * C * HW * elem
    return pixel_launch("spatial_pool_weights_kernel", B, C, HW, elem, 1, 1, 0, 6, 5 * B * HW * 4 * 8,
                        x + B * C * elem + 3 * B * HW * elem + 2 * B * HW * 4, partial_bytes=8)  # tie counts (int64)


def spatial_pool_grad_kernel(B: int, C: int, HW: int, elem: int) -> Launch:
    return plane_launch("spatial_pool_grad_kernel", B, C, HW, elem, 4, 1, 10, 1, PLANE_THREADS * 4,
                        2 * B * C * HW * elem + B * HW * (elem + 8) + B * C * elem,
                        "pooled maxima and weights re-read per plane")


def apply_gates_kernel(B: int, C: int, HW: int, elem: int, pixel_gate: bool) -> Launch:
    """gating_cuda.cu: apply_gates_kernel — a grid-stride loop over chunks of vec elements (vector_width of
    H·W: 16 bytes where it divides), two int64 divisions a chunk; x, the pixel gate and the output a chunk
    an access, the channel gate one element."""
    total = B * C * HW
    vec = vector_width(HW, elem)
    w = warps_of(total // vec)
    lines, sectors = global_access([i * vec * elem for i in range(32)])
    chunked = 2 + (1 if pixel_gate else 0)  # x, the output, the pixel gate
    return Launch("gating", "apply_gates_kernel", (element_blocks(total // vec), 1, 1), (256, 1, 1),
                  min_bytes=2 * total * elem + B * C * elem + (B * HW * elem if pixel_gate else 0),
                  alu=w * (2 * DIV64 + 6 + 2 * vec), mem=w * (chunked + 1), lsu=w * (chunked * lines + 1),
                  l2=w * (chunked * sectors + 1) * 32, gld=w * chunked, ilp=chunked,  # x, the gates
                  note=f"elementwise, {vec}-element chunks, int64 index math a chunk")


def apply_gates_plane_grad_kernel(B: int, C: int, HW: int, elem: int, pixel_gate: bool) -> Launch:
    loads = 2 + (1 if pixel_gate else 0)
    return plane_launch("apply_gates_plane_grad_kernel", B, C, HW, elem, loads, 1, 6, 1, PLANE_THREADS * 4,
                        3 * B * C * HW * elem + B * C * elem * 2 + (B * HW * elem if pixel_gate else 0),
                        "one CTA per plane")


def apply_gates_pixel_grad_kernel(B: int, C: int, HW: int, elem: int) -> Launch:
    return pixel_launch("apply_gates_pixel_grad_kernel", B, C, HW, elem, 2, 1, 2, 4, B * HW * elem * 8,
                        2 * B * C * HW * elem + B * C * elem + B * HW * elem, partial_bytes=4)  # sums (float)


def plain_gating(dev: Device, p: dict, elem: int, passes: int, reductions: int) -> float:
    """ATen elementwise ops (`passes` reads or writes of an x-sized tensor in all) and `reductions` reductions."""
    B, C, HW = ga_dims(p)
    x = B * C * HW * elem
    return reductions * plain_ew(dev, x) + ((passes / 2) * plain_ew(dev, 2 * x) if passes else 0.0)


def gating_op(name: str, forward, backward, plain_fwd: Tuple[int, int], plain_bwd: Tuple[int, int]) -> Op:
    return Op("gating", name, lambda p, e: forward(*ga_dims(p), e), lambda p, e: backward(*ga_dims(p), e),
              lambda d, p, e: plain_gating(d, p, e, *plain_fwd), lambda d, p, e: plain_gating(d, p, e, *plain_bwd))


OPS += [
    # CBAM's channel attention: x.mean((2, 3)) and x.amax((2, 3)); backward: the mean's expand, the max's
    # mask, count and scatter, their sum.
    gating_op("channel_pool (CBAM)", lambda B, C, HW, e: [channel_pool_kernel(B, C, HW, e)],
              lambda B, C, HW, e: [channel_pool_backward_kernel(B, C, HW, e)], (0, 2), (8, 1)),
    # CBAM's spatial attention on x·cg: the product, mean and max over channels; backward: expand, mask and
    # scatter, sum, the product's gradients (x and cg).
    gating_op("spatial_pool (CBAM, gated)", lambda B, C, HW, e: [spatial_pool_kernel(B, C, HW, e)],
              lambda B, C, HW, e: [spatial_pool_weights_kernel(B, C, HW, e), spatial_pool_grad_kernel(B, C, HW, e)],
              (2, 2), (12, 2)),
    # x·cg·pg as two broadcast products; backward: their gradients and the gates' reductions.
    gating_op("apply_gates (CBAM: cg, pg)", lambda B, C, HW, e: [apply_gates_kernel(B, C, HW, e, True)],
              lambda B, C, HW, e: [apply_gates_plane_grad_kernel(B, C, HW, e, True),
                                   apply_gates_pixel_grad_kernel(B, C, HW, e)], (4, 0), (12, 2)),
    # SE: x·y; backward: grad·y and (grad·x).sum((2, 3)).
    gating_op("apply_gates (SE: cg)", lambda B, C, HW, e: [apply_gates_kernel(B, C, HW, e, False)],
              lambda B, C, HW, e: [apply_gates_plane_grad_kernel(B, C, HW, e, False)], (2, 0), (5, 1)),
]


GROUP_THREADS = 256  # gating_cuda.cu: kGroupThreads
SGE_GROUPS = 64  # attnkern.bench.modules: the SGE layer's groups


def group_enhance_launch(kernel: str, B: int, C: int, HW: int, elem: int, backward: bool) -> Launch:
    """gating_cuda.cu: group_enhance_kernel / group_enhance_backward_kernel — a CTA per (sample, group) of 256
    threads: the channel means a warp a channel (and, backward, their gradients), then loops over the positions,
    a thread a position walking the group's m channels (coalesced across the warp); x is read from DRAM once and
    again from the L2 (3 times forward; 4 backward, with the output gradient twice); the similarities (and t)
    go through a float workspace; two (backward: four) block reductions."""
    G = SGE_GROUPS
    groups, m = B * G, C // G
    warps = min(GROUP_THREADS // 32, warps_of(HW))
    pixel_steps = ceil_div(HW, GROUP_THREADS)
    wp = groups * warps * pixel_steps  # warp steps of a pixel loop
    wm = groups * m * ceil_div(HW, 32)  # warp steps of a channel-mean loop
    lines, sectors = global_access([i * elem for i in range(32)])
    x = B * C * HW * elem
    ws = B * G * HW * 4
    if not backward:
        mean_loops, x_loads, stores, ws_traffic, reductions = 1, 2 * m, m + 1, 3, 2
        min_bytes = 2 * x + 2 * G * elem
    else:  # means (x), similarities (x), t (dy, x), mean gradients (x, t), dx (dy)
        mean_loops, x_loads, stores, ws_traffic, reductions = 2, 4 * m, m + 2, 6, 4
        min_bytes = 3 * x + 4 * G * elem
    gld = wm * mean_loops + wp * (x_loads + m + ws_traffic)  # x and dy, the means (broadcast), the workspace
    return Launch("gating", kernel, (groups, 1, 1), (GROUP_THREADS, 1, 1), static_smem=GROUP_THREADS * 4,
                  min_bytes=min_bytes, dram=min_bytes + 2 * ws, ffma=wp * (x_loads + 4) + wm * mean_loops,
                  mufu=wp * 2 * (2 if backward else 1), alu=wp * (x_loads * 4 + 20) + wm * mean_loops * 6
                  + groups * reductions * 8 * 6,
                  mem=gld + wp * stores + groups * reductions * 8 * 3,
                  lsu=(wm * mean_loops + wp * (x_loads + ws_traffic)) * lines + wp * m + wp * stores * lines,
                  l2=(wm * mean_loops + wp * (x_loads + ws_traffic + stores)) * sectors * 32, gld=gld, ilp=2,
                  note=f"a CTA per (sample, group): {groups} CTAs, {m} channels × {HW} positions each")


def plain_group_enhance(dev: Device, p: dict, elem: int, backward: bool) -> float:
    """SGE as the layer's ATen ops: the channel means (a reduction over x), the similarity bmm
    [B·G, 1, C/G]·[B·G, C/G, H·W] (x read again), six small ops on the [B·G, H·W] similarities (mean, subtract,
    std, divide, the affine, sigmoid), x·gate (x read, the output written). Backward: the gate product's two
    gradients (x-sized: grad·gate written, grad·x summed over channels), the small ops' gradients (eight), the
    bmm's two gradients (one reads x, one writes an x-sized tensor), the means' expand (written) and the two
    sums of x's three gradient terms."""
    B, C, HW = ga_dims(p)
    G = SGE_GROUPS
    x, small = B * C * HW * elem, B * G * HW * elem
    if not backward:
        return (plain_ew(dev, x) + plain_gemm(dev, B * G, 1, HW, C // G, elem) + 6 * plain_ew(dev, 2 * small)
                + plain_ew(dev, 2 * x))
    return (plain_ew(dev, 3 * x) + plain_ew(dev, 3 * x) + 8 * plain_ew(dev, 2 * small)
            + 2 * plain_gemm(dev, B * G, 1, HW, C // G, elem) + plain_ew(dev, x) + 2 * plain_ew(dev, 3 * x))


OPS += [
    # SGE (SGE_GROUPS groups): see plain_group_enhance.
    Op("gating", "group_enhance (SGE, 64 groups)",
       lambda p, e: [group_enhance_launch("group_enhance_kernel", *ga_dims(p), e, False)],
       lambda p, e: [group_enhance_launch("group_enhance_backward_kernel", *ga_dims(p), e, True),
                     aten_call("gating", "sum the weight and bias partials over the samples",
                               lambda d: plain_ew(d, 2 * p["B"] * SGE_GROUPS * 4), nbytes=2 * p["B"] * SGE_GROUPS * 4)],
       lambda d, p, e: plain_group_enhance(d, p, e, False), lambda d, p, e: plain_group_enhance(d, p, e, True)),
]


# ---- report -----------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTXAS_DEFAULTS = [os.path.join(ROOT, "build", "ptxas.txt"),
                  os.path.join(ROOT, "benchmarks", "results", "ptxas-sm90.txt")]
ELEM = {"float32": 4, "bfloat16": 2}


def lookup(table: dict, launch: Launch, dtype: str) -> Optional[Resources]:
    key = (launch.family, launch.kernel, dtype, launch.template)
    return table.get(key)


def evaluate(dev: Device, table: dict, dtype: str = "float32") -> List[dict]:
    """One entry per (shape, op, direction): the launches' models and the plain path's time."""
    elem, rows = ELEM[dtype], []
    for family, case, params, main in SHAPES:
        for op in (o for o in OPS if o.family == family):
            for direction, launches_of, plain_of in (("fwd", op.forward, op.plain_forward),
                                                     ("bwd", op.backward, op.plain_backward)):
                results = [model(l, dev, lookup(table, l, dtype)) for l in launches_of(params, elem)]
                floor_mem = sum(r["floor_mem"] for r in results)
                floor_fp32 = sum(r["floor_fp32"] for r in results)
                # each launch's arithmetic floor: tensor-core kernels the tensor-core one, the others FP32
                floor_math = sum(r["floor_tc"] if r["launch"].on_tensor_cores else r["floor_fp32"] for r in results)
                rows.append(dict(family=family, case=case, main=main,
                                 op=op.name, direction=direction, kernels=results,
                                 time=sum(r["time"] for r in results), floor=max(floor_mem, floor_math),
                                 floor_mem=floor_mem, floor_fp32=floor_fp32,
                                 floor_tc=sum(r["floor_tc"] for r in results), plain=plain_of(dev, params, elem)))
    return rows


def us(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    v = seconds * 1e6
    return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"


def quantity(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def verdicts(rows: List[dict]) -> List[str]:
    """Per op: where the modelled kernels lose to the plain path by more than the model's error (3×), where
    they lose within it, and where they win."""
    lines = []
    for op in dict.fromkeys(r["op"] for r in rows):
        mine = [r for r in rows if r["op"] == op]
        clear = [r for r in mine if r["time"] > 3 * r["plain"]]
        close = [r for r in mine if r["plain"] < r["time"] <= 3 * r["plain"]]

        def where(rs: List[dict]) -> str:
            return "; ".join(f"{r['case']} {r['direction']} {r['time'] / r['plain']:.1f}×" for r in rs)

        if clear and len(clear) + len(close) == len(mine):
            verdict = "route to the plain path on CUDA"
        elif clear:
            verdict = "route to the plain path on CUDA where it loses clearly"
        elif close:
            verdict = "slower than the plain path only within the model's error: measure before routing"
        else:
            verdict = "modelled at or below the plain path everywhere: keep the kernels"
        parts = [f"loses > 3×: {where(clear)}" if clear else "", f"loses ≤ 3×: {where(close)}" if close else ""]
        detail = " | ".join(p for p in parts if p)
        lines.append(f"- **{op}**: {verdict}" + (f" ({detail})." if detail else "."))
    return lines


def kernel_cause(r: dict) -> str:
    launch = r["launch"]
    parts = [r["bound"]]
    if launch.note:
        parts.append(launch.note)
    return ": ".join(parts)


def markdown(rows: List[dict], dev: Device, dtype: str, ptxas_source: str) -> str:
    out = [f"# attnkern CUDA kernels: performance model ({dev.name}, {dtype})", "",
           "**A model, not a measurement: the estimates are good to ±2–3×.** Generated by "
           f"`python benchmarks/perf_model.py --gpu {dev.key} --dtype {dtype} --markdown` (assumptions in its "
           f"docstring); registers and static shared memory from `{ptxas_source}` (sm_90). "
           f"{dev.name}: {dev.hbm / 1e12:.2f} TB/s HBM, {dev.fp32 / 1e12:.0f} TFLOP/s FP32, "
           f"{dev.tc / 1e12:.0f} TFLOP/s dense BF16 tensor cores, {dev.sms} SMs. Times in µs, each launch with "
           f"{LAUNCH * 1e6:.0f} µs of launch overhead. ×floor: modelled / max(memory, FP32) floor (tensor-core kernels: max(memory, tensor-core)); ×plain: "
           "modelled / the plain-PyTorch formulation's modelled time.", ""]
    out += ["## Summary at each family's main shape", "",
            "| op | shape | dir | modelled µs | floor µs (mem / FP32 / TC) | ×floor | plain µs | ×plain |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["main"]:
            out.append(f"| {r['op']} | {r['case']} | {r['direction']} | {us(r['time'])} | {us(r['floor_mem'])} / "
                       f"{us(r['floor_fp32'])} / {us(r['floor_tc'])} | {r['time'] / r['floor']:.0f} | "
                       f"{us(r['plain'])} | {r['time'] / r['plain']:.2f} |")
    out += ["", "## Verdicts", ""] + verdicts(rows)
    out += ["", "## Every launch", "",
            "| op | shape | dir | kernel | CTAs × threads | regs | spill st/ld B | smem B (static + dyn) | occ | "
            "waves | FLOP | bytes | floor µs mem / FP32 / TC | model µs | ×floor | plain µs | ×plain | "
            "main cause |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        for k in r["kernels"]:
            launch = k["launch"]
            if launch.aten is not None:
                cfg, regs, spill, smem, occ, waves = "ATen", "—", "—", "—", "—", "—"
            else:
                cfg = f"{launch.ctas:,} × {launch.threads}"
                res = k["res"]
                regs = "?" if res is None else str(res.regs)
                spill = "?" if res is None or res.spill_stores is None else f"{res.spill_stores}/{res.spill_loads}"
                smem, occ, waves = f"{k['smem']:,}", f"{k['occ']:.0%}", f"{k['waves']:.2g}"
            ratio = f"{k['time'] / k['floor']:.0f}" if k["floor"] > 0 else "—"  # intermediates only: no floor of its own
            out.append(f"| {r['op']} | {r['case']} | {r['direction']} | `{launch.kernel}` | {cfg} | {regs} | {spill} | "
                       f"{smem} | "
                       f"{occ} | {waves} | {quantity(launch.flops)} | {quantity(launch.min_bytes)} | "
                       f"{us(k['floor_mem'])} / {us(k['floor_fp32'])} / {us(k['floor_tc'])} | {us(k['time'])} | "
                       f"{ratio} | | | {kernel_cause(k)} |")
        out.append(f"| **{r['op']}** | {r['case']} | **{r['direction']}** | **total** | | | | | | | | | "
                   f"{us(r['floor_mem'])} / {us(r['floor_fp32'])} / {us(r['floor_tc'])} | **{us(r['time'])}** | "
                   f"{r['time'] / r['floor']:.0f} | {us(r['plain'])} | **{r['time'] / r['plain']:.2f}** | |")
    return "\n".join(out) + "\n"


def text(rows: List[dict], dev: Device, dtype: str, ptxas_source: str) -> str:
    out = [f"attnkern CUDA kernels, modelled on {dev.name} ({dtype}); ptxas: {ptxas_source}",
           "A model, not a measurement: estimates good to ±2–3×. Times in µs.", "",
           f"{'op':<28} {'shape':<38} {'dir':<4} {'model':>9} {'floor':>8} {'plain':>8} {'×plain':>7}"]
    for r in rows:
        out.append(f"{r['op']:<28} {r['case']:<38} {r['direction']:<4} {us(r['time']):>9} {us(r['floor']):>8} "
                   f"{us(r['plain']):>8} {r['time'] / r['plain']:>7.2f}")
        for k in r["kernels"]:
            out.append(f"    {k['launch'].kernel:<46} {us(k['time']):>9}  {k['bound']}")
    return "\n".join(out + [""] + verdicts(rows)) + "\n"


def load_ptxas(path: Optional[str]) -> Tuple[dict, str]:
    """The ptxas table: `path`, else build/ptxas.txt with benchmarks/results/ptxas-sm90.txt filling the kernels
    it lacks (an incremental build logs only the files it recompiled)."""
    if path:
        if not os.path.exists(path):
            raise SystemExit(f"perf_model: no such ptxas file: {path}")
        candidates = [path]
    else:
        candidates = [c for c in reversed(PTXAS_DEFAULTS) if os.path.exists(c)]
    table, sources = {}, []
    for candidate in candidates:  # later files win
        with open(candidate, encoding="utf-8", errors="replace") as f:
            entries = parse_ptxas(f.read())
        if entries:
            table.update(entries)
            sources.insert(0, os.path.relpath(candidate, ROOT))
    return table, " + ".join(sources) if sources else "none (registers assumed 32)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h200")
    parser.add_argument("--ptxas", help="-Xptxas -v output (default: build/ptxas.txt, else "
                                        "benchmarks/results/ptxas-sm90.txt)")
    parser.add_argument("--dtype", choices=sorted(ELEM), default="float32")
    parser.add_argument("--markdown", action="store_true", help="the markdown report (default: a text summary)")
    args = parser.parse_args(argv)
    dev = Device(args.gpu)
    table, source = load_ptxas(args.ptxas)
    rows = evaluate(dev, table, args.dtype)
    sys.stdout.write(markdown(rows, dev, args.dtype, source) if args.markdown else text(rows, dev, args.dtype, source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
