"""A performance model of every attnkern CUDA kernel — the design document until a GPU measures.

    python benchmarks/perf_model.py [--gpu h200|h100] [--ptxas FILE] [--dtype float32|bfloat16] [--markdown]

For each op at each benchmark shape (SHAPES, the case names of benchmarks/bench_<family>.py) and for every
kernel launch the op makes, forward and backward: the launch configuration as the .cu host code computes
it, FLOPs, minimum bytes, the device's floors, registers / static shared memory / spills from
`-Xptxas -v` (sm_90), occupancy, waves, a modelled time, and the plain-PyTorch formulation's modelled
time. Pure Python: no torch, no GPU. It is a model, not a measurement: good to ±2–3×.

The model (one small function per kernel, named after it, counts what one launch executes):
  * Counts are warp-level totals taken from the loop structure of the kernel: FMAs (`ffma`), other issued
    arithmetic (`alu`: index math, compares, loop overhead; a 64-bit integer division or modulo by a
    runtime value costs DIV64 issue slots, a 32-bit one DIV32), special-function ops (`mufu`: one per
    exp/log, plus EXP_ALU issue slots of range reduction), memory instructions (`mem`), L1/shared
    wavefronts (`lsu`), bytes between L1 and L2 (`l2`), bytes from DRAM (`dram`, at least the minimum).
  * Coalescing and bank conflicts come from the index pattern: the kernel's own index formulas are
    evaluated for the 32 lanes of a representative warp; a global access costs one wavefront per distinct
    128-byte line and moves its distinct 32-byte sectors; a shared access costs as many wavefronts as the
    most-used bank has distinct words (broadcasts are free).
  * Per SM and clock (sm_90): 4 warp-instructions issued, 4 warp-FMAs (the FP32 peak), 0.5 MUFU,
    1 L1/shared wavefront (128 B). L2→SM 10 TB/s (at most 64 B/clk/SM), HBM at 90 % of peak.
    Work is spread over min(CTAs, SMs) SMs with whole CTAs per SM (ctas / ceil(ctas / SMs)).
  * Latency hiding (Little's law): a pipe needs 16 (FMA/issue) or 32 (LSU) independent warp-operations in
    flight per SM; resident warps × the kernel's `ilp` provide them. Memory time is at least
    bytes × latency / bytes in flight (L2 hit 150 ns, DRAM 550 ns).
  * time = max(core terms, memory terms) + 4 µs launch; for tiled kernels whose load and compute phases
    are separated by __syncthreads and which have one CTA per SM, the core and memory terms add.
  * DRAM bytes = the minimum, plus re-reads where a kernel's re-read set exceeds 75 % of L2.
  * The plain-PyTorch path (what a user writes instead: the benchmark's einsum/bmm/SDPA/conv formulation)
    is a list of library calls: cuBLAS GEMM at 70 % of FP32 peak on the SMs its tiles fill (split-K when
    the tiles cannot fill the GPU), cuDNN convolution at 40 % of the TF32 tensor-core peak (PyTorch's
    default allows TF32 in cuDNN), SDPA memory-efficient (fp32 SIMT) at 35 % of FP32 peak, elementwise
    and reductions at 80 % of HBM bandwidth; each call + 4 µs launch.
  * Floors: bytes / HBM bandwidth, FLOPs / FP32 peak, FLOPs / dense BF16 tensor-core peak. ×floor is the
    modelled time over max(memory, FP32) floor: these kernels run on CUDA cores in FP32 arithmetic. The
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
from dataclasses import dataclass, field
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
LAT_L2, LAT_DRAM = 150e-9, 550e-9
LAUNCH = 4e-6
DIV64, DIV32, EXP_ALU = 25, 15, 8
PLAIN_GEMM_EFF, PLAIN_CONV_EFF, PLAIN_SDPA_EFF, PLAIN_BW_EFF = 0.7, 0.4, 0.35, 0.8
REGS_UNKNOWN = 32  # assumed when the ptxas output has no entry for a kernel


class Device:
    def __init__(self, key: str):
        spec = GPUS[key]
        self.key, self.name, self.sms, self.l2_size = key, spec["name"], spec["sms"], spec["l2_size"]
        self.hbm, self.fp32, self.tc = spec["hbm"], spec["fp32"], spec["tc"]
        self.clock = self.fp32 / (self.sms * 128 * 2)  # FP32 peak = SMs × 128 lanes × 2 FLOP × clock


# ---- the benchmark shapes (case names as in benchmarks/bench_<family>.py) --------------------------

SHAPES = [  # (family, case, parameters); the first case of a family is its main shape
    ("covpool", "SAN training 16×64×48×48", dict(B=16, C=64, H=48, W=48)),
    ("covpool", "SAN test crop 1×64×200×200", dict(B=1, C=64, H=200, W=200)),
    ("covpool", "iSQRT-COV 32×256×14×14", dict(B=32, C=256, H=14, W=14)),
    ("covpool", "YOLO P5 8×1024×20×20", dict(B=8, C=1024, H=20, W=20)),
    ("criss_cross", "CCNet head 2×512×97×97", dict(B=2, C=512, H=97, W=97)),
    ("criss_cross", "YOLO P5 8×1024×20×20", dict(B=8, C=1024, H=20, W=20)),
    ("criss_cross", "1×256×64×64", dict(B=1, C=256, H=64, W=64)),
    ("window_attention", "Swin-T stage 1 32×56×56 C96 h3 w7 s3", dict(B=32, H=56, W=56, C=96, heads=3, window=7, shift=3)),
    ("window_attention", "SwinIR-light 4×64×64 C60 h6 w8 s4", dict(B=4, H=64, W=64, C=60, heads=6, window=8, shift=4)),
    ("window_attention", "SwinIR classical 2×64×64 C180 h6 w8", dict(B=2, H=64, W=64, C=180, heads=6, window=8, shift=0)),
    ("region_conv", "16×128→128 k3 r8 40×40", dict(B=16, Cin=128, Cout=128, k=3, R=8, H=40, W=40)),
    ("region_conv", "8×64→64 k3 r8 32×32", dict(B=8, Cin=64, Cout=64, k=3, R=8, H=32, W=32)),
    ("region_conv", "8×256→256 k1 r4 20×20", dict(B=8, Cin=256, Cout=256, k=1, R=4, H=20, W=20)),
    ("gating", "8×256×40×40", dict(B=8, C=256, H=40, W=40)),
    ("gating", "8×512×20×20", dict(B=8, C=512, H=20, W=20)),
]
SQRTM_ITERS = 5  # bench_covpool.ITERS

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
    if rest.startswith("I"):
        k = 1
        while rest.startswith("L", k):  # non-type template arguments: Lb0E, Li3E, ...
            end = rest.index("E", k)
            literals.append(rest[k + 1:end])
            k = end + 1
        for code, name in DTYPE_CODES.items():
            if rest.startswith(code, k):
                dtype = name
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


def element_blocks(total: int) -> int:  # csrc/common/cuda_utils.cuh: element_blocks
    return min(ceil_div(total, 256), 65535 * 16)


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
    mem: float = 0.0  # memory instructions (issue slots)
    lsu: float = 0.0  # L1/shared wavefronts
    l2: float = 0.0  # bytes between L1 and L2
    dram: float = 0.0  # bytes from/to DRAM (raised to min_bytes)
    gld: float = 0.0  # global warp requests (for bytes in flight)
    ilp: float = 1.0  # independent operations in flight per warp
    ctas_active: Optional[int] = None  # CTAs that do work (default: all)
    warps_busy: Optional[int] = None  # warps of a CTA that do work (default: all)
    phased: bool = False  # load and compute phases separated by __syncthreads
    reuse_set: float = 0.0  # bytes the kernel re-reads through L2
    note: str = ""
    template: Tuple[str, ...] = ()  # template literals, to pick the ptxas entry (aggregate_kernel<true>)
    aten: Optional[float] = None  # an ATen/cuBLAS call of the host code: its modelled time (plain model)

    @property
    def ctas(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]


def aten_call(family: str, what: str, seconds: float, flops: float = 0.0, nbytes: float = 0.0) -> Launch:
    return Launch(family, what, (0, 0, 0), (0, 0, 0), flops=flops, min_bytes=nbytes, aten=seconds)


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
    out["floor"] = max(out["floor_mem"], out["floor_fp32"])
    if launch.aten is not None:
        out.update(time=launch.aten, bound="ATen/cuBLAS (plain model)", bps=None, occ=None, waves=None, smem=None)
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
        "issue": (launch.ffma + launch.alu + launch.mufu + launch.mem) / (4 * clk * sm_eff) / eff_core,
        "FP32": launch.ffma / (4 * clk * sm_eff) / eff_core,
        "SFU": launch.mufu / (0.5 * clk * sm_eff) / eff_core,
        "LSU": launch.lsu / (clk * sm_eff) / eff_lsu,
    }
    mem_terms = {
        "L2": launch.l2 / min(L2_BW, sm_eff * L2_BYTES_PER_CLK_SM * clk),
        "DRAM": dram / (HBM_EFF * dev.hbm),
    }
    if launch.gld > 0 and launch.l2 > 0:
        in_flight = sm_eff * resident * launch.ilp * (launch.l2 / launch.gld)
        mem_terms["latency"] = (launch.l2 * LAT_L2 + dram * (LAT_DRAM - LAT_L2)) / in_flight
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


# ---- report -----------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTXAS_DEFAULTS = [os.path.join(ROOT, "build", "ptxas.txt"), os.path.join(ROOT, "benchmarks", "results", "ptxas-sm90.txt")]
ELEM = {"float32": 4, "bfloat16": 2}


def lookup(table: dict, launch: Launch, dtype: str) -> Optional[Resources]:
    key = (launch.family, launch.kernel, dtype, launch.template)
    return table.get(key)


def evaluate(dev: Device, table: dict, dtype: str = "float32") -> List[dict]:
    """One entry per (shape, op, direction): the launches' models and the plain path's time."""
    elem, rows = ELEM[dtype], []
    for family, case, params in SHAPES:
        for op in (o for o in OPS if o.family == family):
            for direction, launches_of, plain_of in (("fwd", op.forward, op.plain_forward),
                                                     ("bwd", op.backward, op.plain_backward)):
                results = [model(l, dev, lookup(table, l, dtype)) for l in launches_of(params, elem)]
                floor_mem = sum(r["floor_mem"] for r in results)
                floor_fp32 = sum(r["floor_fp32"] for r in results)
                rows.append(dict(family=family, case=case, main=case == next(c for f, c, _ in SHAPES if f == family),
                                 op=op.name, direction=direction, kernels=results,
                                 time=sum(r["time"] for r in results), floor=max(floor_mem, floor_fp32),
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
    """Per op: the shapes and directions where the modelled kernels lose to the plain path."""
    lines = []
    for op in dict.fromkeys(r["op"] for r in rows):
        mine = [r for r in rows if r["op"] == op]
        losing = [r for r in mine if r["time"] > r["plain"]]
        if not losing:
            lines.append(f"- **{op}**: the kernels are modelled at or below the plain path everywhere: keep them.")
            continue
        where = "; ".join(f"{r['case']} {r['direction']} {r['time'] / r['plain']:.1f}×" for r in losing)
        verdict = ("route to the plain path on CUDA" if len(losing) == len(mine) else
                   "candidate to route to the plain path on CUDA where modelled slower")
        lines.append(f"- **{op}**: {verdict} (modelled/plain: {where}).")
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
           f"{LAUNCH * 1e6:.0f} µs of launch overhead. ×floor: modelled / max(memory, FP32) floor; ×plain: "
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
            "| op | shape | dir | kernel | CTAs × threads | regs | smem B | occ | waves | FLOP | bytes | "
            "floor µs mem / FP32 / TC | model µs | ×floor | plain µs | ×plain | main cause |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        for k in r["kernels"]:
            launch = k["launch"]
            if launch.aten is not None:
                cfg, regs, smem, occ, waves = "ATen", "—", "—", "—", "—"
            else:
                cfg = f"{launch.ctas:,} × {launch.threads}"
                res = k["res"]
                regs = "?" if res is None else str(res.regs) + (f" (spill {res.spill_stores}/{res.spill_loads})"
                                                                if res.spill_stores else "")
                smem, occ, waves = f"{k['smem']:,}", f"{k['occ']:.0%}", f"{k['waves']:.2g}"
            out.append(f"| {r['op']} | {r['case']} | {r['direction']} | `{launch.kernel}` | {cfg} | {regs} | {smem} | "
                       f"{occ} | {waves} | {quantity(launch.flops)} | {quantity(launch.min_bytes)} | "
                       f"{us(k['floor_mem'])} / {us(k['floor_fp32'])} / {us(k['floor_tc'])} | {us(k['time'])} | "
                       f"{k['time'] / max(k['floor'], 1e-12):.0f} | | | {kernel_cause(k)} |")
        out.append(f"| **{r['op']}** | {r['case']} | **{r['direction']}** | **total** | | | | | | | | "
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
    candidates = [path] if path else PTXAS_DEFAULTS
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            with open(candidate, encoding="utf-8", errors="replace") as f:
                return parse_ptxas(f.read()), os.path.relpath(candidate, ROOT)
    if path:
        raise SystemExit(f"perf_model: no such ptxas file: {path}")
    return {}, "none (registers assumed 32)"


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
