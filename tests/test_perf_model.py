"""benchmarks/perf_model.py: the CUDA performance model runs, covers every kernel, respects the floors and
the launch limits, and reads `-Xptxas -v` output. Pure Python: no torch, no GPU."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks are scripts, not a package
import perf_model as pm  # noqa: E402

# Hand-written ptxas output in the build log's format: sm_80 and sm_90 entries, a template bool literal,
# a spill line, a kernel outside any namespace.
FIXTURE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN8attnkern7covpool53_GLOBAL__N__90ba3448_15_covpool_cuda_cu_dd5269b3_554720sqrtm_forward_kernelIffEEvPKT_PKT0_PS3_lll' for 'sm_80'
ptxas info    : Function properties for _ZN8attnkern7covpool53_GLOBAL__N__90ba3448_15_covpool_cuda_cu_dd5269b3_554720sqrtm_forward_kernelIffEEvPKT_PKT0_PS3_lll
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2176 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN8attnkern7covpool53_GLOBAL__N__90ba3448_15_covpool_cuda_cu_dd5269b3_554720sqrtm_forward_kernelIffEEvPKT_PKT0_PS3_lll' for 'sm_90'
ptxas info    : Function properties for _ZN8attnkern7covpool53_GLOBAL__N__90ba3448_15_covpool_cuda_cu_dd5269b3_554720sqrtm_forward_kernelIffEEvPKT_PKT0_PS3_lll
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 38 registers, used 1 barriers, 2176 bytes smem
ptxas info    : Compiling entry function '_ZN8attnkern7covpool53_GLOBAL__N__90ba3448_15_covpool_cuda_cu_dd5269b3_554720sqrtm_forward_kernelIN3c108BFloat16EfEEvPKT_PKT0_PS5_lll' for 'sm_90'
ptxas info    : Function properties for _ZN8attnkern7covpool53_GLOBAL__N__90ba3448_15_covpool_cuda_cu_dd5269b3_554720sqrtm_forward_kernelIN3c108BFloat16EfEEvPKT_PKT0_PS5_lll
ptxas info    : Used 36 registers, used 1 barriers, 2176 bytes smem
ptxas info    : Compiling entry function '_ZN8attnkern11criss_cross57_GLOBAL__N__0123abcd_19_criss_cross_cuda_cu_2ea70d1d_578016aggregate_kernelILb1EffEEvPKT0_S3_PS1_llll' for 'sm_90'
ptxas info    : Used 30 registers, used 0 barriers
ptxas info    : Compiling entry function '_Z11demo_kernelPf' for 'sm_90'
ptxas info    : Used 8 registers, used 0 barriers
"""


@pytest.fixture(scope="module")
def rows():
    return pm.evaluate(pm.Device("h200"), pm.parse_ptxas(FIXTURE))


def test_demangle():
    names, dtype, literals = pm.demangle_kernel(
        "_ZN8attnkern7covpool53_GLOBAL__N__90ba3448_15_covpool_cuda_cu_dd5269b3_554723triuvec_backward_kernelIdEEvPKT_PS3_lll")
    assert names[:2] == ["attnkern", "covpool"] and names[-1] == "triuvec_backward_kernel"
    assert dtype == "float64" and literals == ()
    names, dtype, literals = pm.demangle_kernel(
        "_ZN8attnkern11criss_cross4anon16aggregate_kernelILb1EN3c104HalfEfEEvPKT0_S3_PS1_llll")
    assert names[-1] == "aggregate_kernel" and dtype == "float16" and literals == ("b1",)
    # literals after the type (a kernel<scalar_t, bool>): the two instantiations stay apart
    for flag in (0, 1):
        names, dtype, literals = pm.demangle_kernel(
            f"_ZN8attnkern4demo4anon11demo_kernelIN3c108BFloat16ELb{flag}EEEvPKT_S7_llllll")
        assert names[-1] == "demo_kernel" and dtype == "bfloat16" and literals == (f"b{flag}",)
    assert pm.demangle_kernel("_Z11demo_kernelPf")[0] == ["demo_kernel"]


def test_parse_fixture():
    table = pm.parse_ptxas(FIXTURE)
    fwd = table[("covpool", "sqrtm_forward_kernel", "float32", ())]
    assert (fwd.regs, fwd.smem, fwd.stack, fwd.spill_stores, fwd.spill_loads) == (38, 2176, 8, 4, 12)  # sm_90's
    bf16 = table[("covpool", "sqrtm_forward_kernel", "bfloat16", ())]
    assert bf16.regs == 36 and bf16.spill_stores is None  # no stack-frame line: unknown
    assert table[("criss_cross", "aggregate_kernel", "float32", ("b1",))].regs == 30
    assert table[("", "demo_kernel", "", ())].regs == 8
    assert len(table) == 4  # the sm_80 entry is not sm_90's
    assert pm.parse_ptxas(FIXTURE, arch="sm_80")[("covpool", "sqrtm_forward_kernel", "float32", ())].regs == 40


def test_every_kernel_is_modelled(rows):
    kernels = set()
    for path in sorted((ROOT / "csrc").glob("*/*_cuda.cu")):
        kernels |= set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", path.read_text()))
    assert len(kernels) >= 20  # the regex finds them (27 after covpool moved to cuBLAS)
    modelled = {k["launch"].kernel for r in rows for k in r["kernels"] if k["launch"].aten is None}
    assert kernels <= modelled, f"kernels without a row: {sorted(kernels - modelled)}"
    families = {r["family"] for r in rows}
    assert families == {"covpool", "criss_cross", "window_attention", "region_conv", "gating"}


def test_floors_and_launch_limits(rows):
    for r in rows:
        assert 0 < r["floor"] <= r["time"], (r["op"], r["case"], r["direction"])
        assert r["plain"] > 0
        for k in r["kernels"]:
            launch = k["launch"]
            where = (r["op"], r["case"], r["direction"], launch.kernel)
            assert k["floor"] <= k["time"], where
            assert k["floor_tc"] <= k["floor_fp32"], where
            if launch.aten is not None:
                continue
            assert 1 <= launch.threads <= pm.MAX_THREADS_PER_BLOCK, where
            assert launch.grid[0] <= 2**31 - 1 and launch.grid[1] <= 65535 and launch.grid[2] <= 65535, where
            assert launch.static_smem <= pm.STATIC_SMEM_MAX, where
            assert k["smem"] <= pm.SMEM_OPTIN, where
            assert k["bps"] >= 1, where  # the launch fits an SM
            assert 0 < k["occ"] <= 1, where


def test_resources_come_from_ptxas(rows):
    fwd = [k for r in rows for k in r["kernels"] if k["launch"].kernel == "sqrtm_forward_kernel"]
    assert fwd and all(k["regs"] == 38 and k["smem"] == 2176 + k["launch"].dyn_smem for k in fwd)
    other = [k for r in rows for k in r["kernels"] if k["launch"].kernel == "sqrtm_backward_kernel"]
    assert other and all(k["regs"] is None for k in other)  # not in the fixture: assumed, shown as "?"


def test_occupancy():
    assert pm.occupancy(256, 32, 0) == 8  # threads
    assert pm.occupancy(256, 128, 0) == 2  # registers: 128 × 256 = 32768 a CTA
    assert pm.occupancy(64, 32, 100 * 1024) == 2  # shared memory (+1 KiB reserved a CTA)
    assert pm.occupancy(32, 16, 0) == 32  # CTAs a SM


def test_access_patterns():
    assert pm.global_access([4 * i for i in range(32)]) == (1, 4)  # coalesced float32
    assert pm.global_access([4 * 4096 * i for i in range(32)]) == (32, 32)  # strided
    assert pm.bank_ways([i * 64 for i in range(32)]) == 32  # a column of a 64-wide float matrix
    assert pm.bank_ways([i * 65 for i in range(32)]) == 1  # padded rows
    assert pm.bank_ways([7] * 32) == 1  # broadcast


def test_fragment_order_bank_conflicts():
    # window_attention_mma.cuh reads the bias (bf16) and its gradient (float) in accumulator-fragment order
    assert pm.fragment_ways(64, 2) == 8  # 64 values a row: a fragment's 8 rows in the same 4 banks
    assert pm.fragment_ways(pm.mma_bias_ld(64), 2) == 1  # rows 4 banks apart
    assert pm.fragment_ways(pm.mma_bias_ld(49), 2) == 2  # rows of 49 stay unpadded
    assert (pm.fragment_ways(64, 4), pm.fragment_ways(49, 4)) == (8, 4)
    assert all(pm.fragment_ways(pm.mma_bias_grad_ld(N), 4, width=2) == 2 for N in (16, 49, 64))  # pairs: 64 words
    # the backward's tile, read a key pair at a time: rows Np + 8 apart where N is not a multiple of 8
    assert all(pm.fragment_ways(pm.mma_backward_bias_ld(N), 2, width=2) == 1 for N in (1, 9, 16, 25, 36, 49, 64))


def test_latency_counts_the_loads_a_warp_waits_for():
    """Little's law bounds a launch by the loads in flight; a warp does not wait for its stores. A transpose
    counts the side it reads: into the column layout the image, whether or not it also writes the row layout;
    back, the columns, and the row layout where it adds it."""
    N, L, W, elem = 8, 256, 64, 2
    into = pm.transpose_kernel(N, L, W, elem, to_columns=True)
    into_and_rows = pm.transpose_kernel(N, L, W, elem, to_columns=True, rows=True)
    back = pm.transpose_kernel(N, L, W, elem, to_columns=False)
    back_adding_rows = pm.transpose_kernel(N, L, W, elem, to_columns=False, rows=True)
    assert into.gld == into_and_rows.gld == N * L * pm.ceil_div(W, pm.TILE)  # a warp access an image row tile
    assert back_adding_rows.gld == back.gld + into.gld
    assert into.l2 < into_and_rows.l2  # the row layout's bytes still travel: in the L2 and DRAM terms


def test_report(rows):
    dev = pm.Device("h200")
    md = pm.markdown(rows, dev, "float32", "fixture")
    assert "not a measurement" in md and "±2–3×" in md
    for op in pm.OPS:
        assert op.name in md
    assert md.count("| **total** |") == len(rows)
    assert pm.verdicts(rows)


def test_cli_and_options(tmp_path, capsys):
    ptxas = tmp_path / "ptxas.txt"
    ptxas.write_text(FIXTURE)
    assert pm.main(["--gpu", "h100", "--dtype", "bfloat16", "--ptxas", str(ptxas)]) == 0
    out = capsys.readouterr().out
    assert "H100" in out and "bfloat16" in out and "criss_cross_attention" in out


def test_committed_ptxas_covers_every_launch():
    """benchmarks/results/ptxas-sm90.txt (the default without a build) has every kernel, and ptxas's static
    shared memory equals what the model reads off the code."""
    table = pm.parse_ptxas((ROOT / "benchmarks" / "results" / "ptxas-sm90.txt").read_text())
    for r in pm.evaluate(pm.Device("h200"), table):
        for k in r["kernels"]:
            launch = k["launch"]
            if launch.aten is None:
                assert k["res"] is not None, launch.kernel
                assert k["res"].smem == launch.static_smem, launch.kernel
                assert k["floor"] <= k["time"]


@pytest.mark.skipif(not (ROOT / "build" / "ptxas.txt").exists(), reason="no build/ptxas.txt (CUDA build)")
def test_with_the_build_ptxas():
    table = pm.parse_ptxas((ROOT / "build" / "ptxas.txt").read_text(errors="replace"))
    assert table, "build/ptxas.txt has no sm_90 entries"
    rows = pm.evaluate(pm.Device("h200"), table)
    for r in rows:
        assert r["floor"] <= r["time"]
        for k in r["kernels"]:
            assert k["floor"] <= k["time"]
            if k["launch"].aten is None:
                assert k["bps"] >= 1
