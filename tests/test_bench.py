"""The benchmark runner works end to end (tiny shapes, no timing claims)."""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import attnkern
from attnkern import bench


def test_bench_smoke_runs_every_family():
    results = bench.run(smoke=True, compile=False, device="cpu", log=open("/dev/null", "w"))
    families = {r.family for r in results}
    assert families == {"covpool+sqrtm", "criss-cross layer", "DRConv2d layer", "dynamic conv op",
                        "DoubleAttention layer", "SEAttention layer", "CBAM layer", "scSE layer", "SGE layer",
                        "SKConv layer", "SCConv layer", "SplitAttn layer", "window attention branch", "SwinIR network"}
    for family in families:
        names = {r.impl for r in results if r.family == family}
        assert "attnkern" in names and len(names) >= 2 and not any("compile" in n for n in names)
    # the families with per-capability kernels: rows for every capability this CPU runs
    supported = set(bench.cpu_capabilities_supported())
    for family in ("window attention branch", "SwinIR network", "SEAttention layer", "CBAM layer"):
        assert {r.cpu_capability for r in results if r.family == family} == supported
    assert {r.cpu_capability for r in results if r.family == "covpool+sqrtm"} == {bench.cpu_capability()}
    # ONNX Runtime beside them where it is installed (a skipped row, with its reason, where not)
    network = {r.impl: r for r in results if r.family == "SwinIR network" and r.cpu_capability == bench.cpu_capability()}
    assert bench.ONNX_RUNTIME in network and "onnxruntime" in network[bench.ONNX_RUNTIME].note
    results = [r for r in results if r.fwd_ms is not None or "not installed" not in r.note]
    for r in results:
        inference_only = r.family == "SwinIR network"
        assert r.fwd_ms > 0 and not math.isnan(r.peak_mib)
        assert (r.fwd_bwd_ms is None) if inference_only else (r.fwd_bwd_ms > 0)
    table = bench.markdown(results)
    assert sum(table.count(f"| {f} |") for f in families) == len(results)
    own_rows = table.count("1.0× / 1.0×") + table.count("1.0× / —")  # attnkern's rows, relative to themselves
    assert own_rows >= len(families)
    assert f"CPU capability {bench.cpu_capability()}" in table


def test_peak_memory_sees_an_allocation():
    import torch

    with bench.PeakMemory("cpu") as peak:
        buf = torch.ones(16, 2**20)  # 64 MiB, written
        del buf
    assert peak.mib > 48


def test_onnxruntime_row_is_skipped_without_onnxruntime(monkeypatch):
    import sys

    import torch

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    impls, skip, notes = bench.onnxruntime_row(torch.nn.Identity(), torch.zeros(1, 1, 2, 2), "cpu")
    assert set(impls) == set(skip) == {bench.ONNX_RUNTIME} and "not installed" in skip[bench.ONNX_RUNTIME]
    assert bench.onnxruntime_row(torch.nn.Identity(), torch.zeros(1, 1, 2, 2), "cuda") == ({}, {}, {})


def test_runs_from_an_installed_package(tmp_path):
    """`python -m attnkern.bench` needs nothing outside the package: run from a copy of attnkern/ alone
    (extension included, as a wheel installs it), from another directory."""
    site = tmp_path / "site-packages"
    shutil.copytree(Path(attnkern.__file__).parent, site / "attnkern", ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args):
        result = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert Path(run("-c", "import attnkern.bench; print(attnkern.bench.__file__)").strip()).is_relative_to(site)
    table = run("-m", "attnkern.bench", "--smoke", "--family", "covpool", "--no-compile")
    assert "| family | shape | dtype |" in table and "| covpool+sqrtm |" in table and "| attnkern |" in table


def test_kernels_row_on_cuda_only():
    impls = {"attnkern": lambda x: attnkern.ops.cuda_kernels_setting()}
    assert bench.with_kernels_row(impls, "cpu") == impls
    rows = bench.with_kernels_row(impls, "cuda")
    assert set(rows) == {"attnkern", bench.KERNELS_ROW}
    with attnkern.ops.cuda_kernels("auto"):
        assert rows["attnkern"](None) == "auto" and rows[bench.KERNELS_ROW](None) == "always"
