"""Benchmark runner: ``python -m attnkern.bench [--family NAME] [--json FILE] [--smoke] [--no-compile] [--budget S]``.

Runs every ``benchmarks/bench_<family>.py`` of the source tree on the present device (CUDA when
available, else CPU) and prints one markdown table: median time of the forward and of
forward+backward, and peak memory of forward+backward (of the forward for inference-only rows), for
each implementation at each shape.

A benchmark module defines ``cases(device, smoke) -> list[Case]``. Peak memory is measured as
``torch.cuda.max_memory_allocated`` on CUDA, and on the CPU as the rise of the process's peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) after glibc has returned its free
heap pages (``malloc_trim``), so that memory reused during the measured call counts again.
"""

import argparse
import ctypes
import importlib.util
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import attnkern

Inputs = Tuple[torch.Tensor, ...]


@dataclass
class Case:
    """One shape of one family: fresh inputs, and the implementations to compare on them."""

    family: str
    shape: str
    dtype: torch.dtype
    make_inputs: Callable[[], Inputs]  # floating inputs that need a gradient have requires_grad
    impls: Dict[str, Callable[..., torch.Tensor]]  # name → fn(*inputs) → output
    skip: Dict[str, str] = field(default_factory=dict)  # name → why it is not run
    forward_only: bool = False  # inference rows: no backward; peak memory of the forward

    def result(self, impl: str, device: str, note: str = "") -> "Result":
        """An empty row of the table for one implementation of this case."""
        return Result(self.family, self.shape, str(self.dtype).replace("torch.", ""), impl, device, note=note)


@dataclass
class Result:
    family: str
    shape: str
    dtype: str
    impl: str
    device: str
    fwd_ms: Optional[float] = None
    fwd_bwd_ms: Optional[float] = None
    peak_mib: Optional[float] = None
    note: str = ""


def benchmarks_dir() -> Path:
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (root / "benchmarks").is_dir():
            return root / "benchmarks"
    raise FileNotFoundError("benchmarks/ not found: run from the attnkern source tree")


def load_families(names: Optional[Sequence[str]] = None):
    modules = {}
    for path in sorted(benchmarks_dir().glob("bench_*.py")):
        family = path.stem[len("bench_"):]
        if names and family not in names:
            continue
        spec = importlib.util.spec_from_file_location(f"attnkern_bench_{family}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[family] = module
    missing = set(names or ()) - set(modules)
    if missing:
        raise ValueError(f"no benchmark for {sorted(missing)} in {benchmarks_dir()}")
    return modules


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
    result = case.result(name, device)
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


def run(families: Optional[Sequence[str]] = None, smoke: bool = False, compile: bool = True,
        device: Optional[str] = None, log=sys.stderr, budget_s: Optional[float] = None) -> List[Result]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    budget = budget_s if budget_s is not None else 0.05 if smoke else 1.0
    results = []
    for family, module in load_families(families).items():
        for case in module.cases(device, smoke):
            for name, fn in case.impls.items():
                if name in case.skip:
                    results.append(case.result(name, device, note=case.skip[name]))
                    continue
                if "compile" in name and not compile:
                    continue
                print(f"  {family} {case.shape} {case.dtype} {name} ...", file=log, flush=True)
                results.append(measure(case, name, fn, device, budget))
                if device == "cuda":
                    torch.cuda.empty_cache()
    return results


# ---- report ---------------------------------------------------------------------------------


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown(results: List[Result], baseline: str = "attnkern") -> str:
    device = results[0].device if results else "?"
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [
        f"attnkern {attnkern.__version__}, torch {torch.__version__}, {where}",
        "",
        "| family | shape | dtype | implementation | fwd ms | fwd+bwd ms | peak MiB (fwd+bwd, or fwd) "
        f"| {baseline} speed-up fwd / fwd+bwd | note |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    base = {(r.family, r.shape, r.dtype): r for r in results if r.impl == baseline}
    for r in results:
        b = base.get((r.family, r.shape, r.dtype))
        speedup = "—"
        if b is not None and r.fwd_ms is not None and b.fwd_ms:
            speedup = f"{r.fwd_ms / b.fwd_ms:.1f}×"
            speedup += f" / {r.fwd_bwd_ms / b.fwd_bwd_ms:.1f}×" if r.fwd_bwd_ms is not None else " / —"
        lines.append(f"| {r.family} | {r.shape} | {r.dtype} | {r.impl} | {_fmt(r.fwd_ms)} | {_fmt(r.fwd_bwd_ms)} "
                     f"| {_fmt(r.peak_mib, 1)} | {speedup} | {r.note} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attnkern.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", help="only this family (repeatable), e.g. covpool")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, short timings (checks the harness)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="time spent timing each measurement (default 1, 0.05 with --smoke)")
    args = parser.parse_args(argv)
    results = run(args.family, smoke=args.smoke, compile=not args.no_compile, device=args.device,
                  budget_s=args.budget)
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in results], f, indent=1)


if __name__ == "__main__":
    main()
