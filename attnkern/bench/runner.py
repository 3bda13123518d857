"""Benchmark runner: ``python -m attnkern.bench [--family NAME] [--json FILE] [--smoke] [--no-compile]
[--budget S] [--cpu-capability default|avx2|avx512]``.

Runs the benchmark module of every family (``attnkern.bench.<family>``, :data:`FAMILIES`) on the
present device (CUDA when available, else CPU) and prints one markdown table: median time of the
forward and of forward+backward, and peak memory of forward+backward (of the forward for
inference-only rows), for each implementation at each shape.

On the CPU the families with vectorised kernels (CAPABILITY_FAMILIES) are measured once per CPU
capability this machine runs, each in a fresh process that runs as a CPU of that capability would:
attnkern's kernels (ATTNKERN_CPU_CAPABILITY), ATen's (ATEN_CPU_CAPABILITY), MKL's and oneDNN's all
limited to it. ``--cpu-capability`` runs the whole benchmark that way for one capability.

On CUDA the families with an op that the routing table (attnkern.ops._cuda_routing) may send to its
plain cuBLAS/cuDNN/SDPA formulation have two attnkern rows: "attnkern" (what a user gets: the table)
and "attnkern kernels" (the hand-written kernels everywhere: ``attnkern.ops.cuda_kernels("always")``);
on the CPU the two are the same and only "attnkern" is measured.

A benchmark module defines ``cases(device, smoke) -> list[Case]`` (:mod:`attnkern.bench.case`).
Peak memory is measured as ``torch.cuda.max_memory_allocated`` on CUDA, and on the CPU as the rise of
the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) after glibc has
returned its free heap pages (``malloc_trim``), so that memory reused during the measured call counts
again.
"""

import argparse
import ctypes
import importlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Callable, Dict, List, Optional, Sequence

import torch

import attnkern

from .case import Case, Result, cpu_capability

CPU_CAPABILITIES = ("default", "avx2", "avx512")
# Families whose CPU kernels are compiled per capability: measured on each one the machine runs.
CAPABILITY_FAMILIES = ("window_attention", "gating")
# What each library reads to limit itself to a capability.
_CAPABILITY_ENVIRONMENT = {
    "ATTNKERN_CPU_CAPABILITY": {"default": "default", "avx2": "avx2", "avx512": "avx512"},
    "ATEN_CPU_CAPABILITY": {"default": "default", "avx2": "avx2", "avx512": "avx512"},
    "MKL_ENABLE_INSTRUCTIONS": {"default": "SSE4_2", "avx2": "AVX2", "avx512": "AVX512"},
    "ONEDNN_MAX_CPU_ISA": {"default": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE"},
}


def capability_environment(capability: str) -> Dict[str, str]:
    """The environment variables that make attnkern, ATen, MKL and oneDNN run as on a CPU of `capability`."""
    return {name: values[capability] for name, values in _CAPABILITY_ENVIRONMENT.items()}


def cpu_capabilities_supported() -> List[str]:
    """The capabilities this CPU runs, from the best one down (asked of a fresh process: this one's may
    be lowered)."""
    env = {k: v for k, v in os.environ.items() if k not in _CAPABILITY_ENVIRONMENT}
    best = subprocess.run([sys.executable, "-c", "import attnkern; print(attnkern.build_info()['cpu_capability'])"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    return list(reversed(CPU_CAPABILITIES[: CPU_CAPABILITIES.index(best) + 1]))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"model name\s*:\s*(.*)", f.read()).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


# The benchmark modules, attnkern.bench.<family>, in the order of the table.
FAMILIES = ("covpool", "criss_cross", "gating", "modules", "region_conv", "window_attention", "yolo")


def load_families(names: Optional[Sequence[str]] = None) -> Dict[str, ModuleType]:
    """The benchmark modules of the named families (all by default), by family name."""
    missing = set(names or ()) - set(FAMILIES)
    if missing:
        raise ValueError(f"no benchmark for {sorted(missing)}; families: {', '.join(FAMILIES)}")
    return {family: importlib.import_module(f"{__package__}.{family}")
            for family in FAMILIES if not names or family in names}


# ---- measurement ----------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], None], device: str, min_reps: int = 5, budget_s: float = 1.0) -> float:
    fn()  # warm-up
    _sync(device)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc keeps them resident otherwise), so that memory
    reused during the measured block shows up in its resident-set peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory (MiB) allocated while the block runs, above what was in use when it started."""

    def __init__(self, device: str):
        self.device = device
        self.mib = math.nan

    @staticmethod
    def _proc_kib(key: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1))

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            _release_free_heap()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident set
            self._base = self._proc_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = self._proc_kib("VmHWM") * 1024
        self.mib = (peak - self._base) / 2**20
        return False


def measure(case: Case, name: str, fn: Callable[..., torch.Tensor], device: str, budget_s: float) -> Result:
    result = case.result(name, device, note=case.notes.get(name, ""))
    inputs = case.make_inputs()
    leaves = [t for t in inputs if t.requires_grad]
    with torch.no_grad():
        grad = None if case.forward_only else torch.randn_like(fn(*inputs))

    def forward():
        with torch.no_grad():
            fn(*inputs)

    def forward_backward():
        for t in leaves:
            t.grad = None
        fn(*inputs).backward(grad)

    result.fwd_ms = median_ms(forward, device, budget_s=budget_s)
    if case.forward_only:
        with PeakMemory(device) as peak:
            forward()
    else:
        result.fwd_bwd_ms = median_ms(forward_backward, device, budget_s=budget_s)
        for t in leaves:
            t.grad = None
        with PeakMemory(device) as peak:
            forward_backward()
    result.peak_mib = peak.mib
    return result


# torch.compile is not run in a process whose ATen capability is forced: inductor then fails (C++
# compile errors at "default"; at "avx2" the compiled CBAM crashes in ATen's adaptive_max_pool2d
# backward, torch 2.14.1 on an AVX-512 machine).
FORCED_CAPABILITY_COMPILE_NOTE = "not run: torch.compile fails under a forced ATEN_CPU_CAPABILITY"


def run(families: Optional[Sequence[str]] = None, smoke: bool = False, compile: bool = True,
        device: Optional[str] = None, log=sys.stderr, every_capability: bool = True,
        budget_s: Optional[float] = None) -> List[Result]:
    """Measures the families (all by default). On the CPU with `every_capability`, the
    CAPABILITY_FAMILIES are measured again for each lower capability the machine runs."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    forced = device == "cpu" and "ATEN_CPU_CAPABILITY" in os.environ
    budget = budget_s if budget_s is not None else 0.05 if smoke else 1.0
    modules = load_families(families)
    results = []
    for family, module in modules.items():
        for case in module.cases(device, smoke):
            for name, fn in case.impls.items():
                if name in case.skip:
                    results.append(case.result(name, device, note=case.skip[name]))
                    continue
                if "compile" in name and not compile:
                    continue
                if "compile" in name and forced:
                    results.append(case.result(name, device, note=FORCED_CAPABILITY_COMPILE_NOTE))
                    continue
                print(f"  {family} {case.shape} {case.dtype} {name} ...", file=log, flush=True)
                results.append(measure(case, name, fn, device, budget))
                if device == "cuda":
                    torch.cuda.empty_cache()
    if device == "cpu" and every_capability:
        vectorised = [family for family in modules if family in CAPABILITY_FAMILIES]
        for capability in cpu_capabilities_supported():
            if capability != cpu_capability() and vectorised:
                results += run_with_capability(capability, vectorised, smoke, compile, log, budget_s)
    return grouped(results)


def run_with_capability(capability: str, families: Sequence[str], smoke: bool, compile: bool, log,
                        budget_s: Optional[float] = None) -> List[Result]:
    """The families measured in a fresh process limited to `capability` (capability_environment)."""
    print(f"  CPU capability {capability}: {', '.join(families)} in a new process ...", file=log, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "results.json")
        argv = [sys.executable, "-m", "attnkern.bench", "--device", "cpu", "--cpu-capability", capability,
                "--json", path] + [a for f in families for a in ("--family", f)]
        argv += ["--smoke"] * smoke + ["--no-compile"] * (not compile)
        argv += ["--budget", str(budget_s)] if budget_s is not None else []
        subprocess.run(argv, env={**os.environ, **capability_environment(capability)}, stdout=subprocess.DEVNULL,
                       stderr=log, check=True)
        with open(path) as f:
            return [Result(**r) for r in json.load(f)]


def grouped(results: List[Result]) -> List[Result]:
    """Rows of a family together (in the order families first appear), then by shape and capability."""
    first = {}
    for i, r in enumerate(results):
        first.setdefault(r.family, i)
        first.setdefault((r.family, r.shape), i)
    return sorted(results, key=lambda r: (first[r.family], first[(r.family, r.shape)],
                                          -CPU_CAPABILITIES.index(r.cpu_capability) if r.cpu_capability else 0))


# ---- report ---------------------------------------------------------------------------------


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown(results: List[Result], baseline: str = "attnkern") -> str:
    device = results[0].device if results else "?"
    if device == "cuda":
        where = torch.cuda.get_device_name()
    else:
        where = (f"CPU {cpu_name()}, {torch.get_num_threads()} threads; CPU capability {cpu_capability()} "
                 f"(ATen {torch.backends.cpu.get_cpu_capability()}) unless a row says otherwise")
    cpu = device == "cpu"
    lines = [
        f"attnkern {attnkern.__version__}, torch {torch.__version__}, {where}",
        "",
        "| family | shape | dtype |" + (" CPU capability |" if cpu else "") + " implementation | fwd ms | fwd+bwd ms "
        f"| peak MiB (fwd+bwd, or fwd) | {baseline} speed-up fwd / fwd+bwd | note |",
        "|---|---|---|" + ("---|" if cpu else "") + "---|---:|---:|---:|---:|---|",
    ]
    base = {(r.family, r.shape, r.dtype, r.cpu_capability): r for r in results if r.impl == baseline}
    for r in results:
        b = base.get((r.family, r.shape, r.dtype, r.cpu_capability))
        speedup = "—"
        if b is not None and r.fwd_ms is not None and b.fwd_ms:
            speedup = f"{r.fwd_ms / b.fwd_ms:.1f}×"
            speedup += f" / {r.fwd_bwd_ms / b.fwd_bwd_ms:.1f}×" if r.fwd_bwd_ms is not None else " / —"
        capability = f" {r.cpu_capability} |" if cpu else ""
        lines.append(f"| {r.family} | {r.shape} | {r.dtype} |{capability} {r.impl} | {_fmt(r.fwd_ms)} | {_fmt(r.fwd_bwd_ms)} "
                     f"| {_fmt(r.peak_mib, 1)} | {speedup} | {r.note} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m attnkern.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", help="only this family (repeatable), e.g. covpool")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, short timings (checks the harness)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="time spent timing each measurement (default 1, 0.05 with --smoke)")
    parser.add_argument("--cpu-capability", choices=CPU_CAPABILITIES,
                        help="run everything as on a CPU of this capability (attnkern, ATen, MKL and oneDNN "
                             "limited to it); default: the CAPABILITY_FAMILIES on every capability this CPU runs")
    args = parser.parse_args(argv)
    if args.cpu_capability:
        env = capability_environment(args.cpu_capability)
        if any(os.environ.get(k) != v for k, v in env.items()):  # the libraries read them when they load
            os.execve(sys.executable, [sys.executable, "-m", "attnkern.bench", *argv], {**os.environ, **env})
        if cpu_capability() != args.cpu_capability:
            parser.error(f"this CPU does not run {args.cpu_capability} (attnkern runs {cpu_capability()})")
    results = run(args.family, smoke=args.smoke, compile=not args.no_compile, device=args.device,
                  every_capability=not args.cpu_capability, budget_s=args.budget)
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in results], f, indent=1)

