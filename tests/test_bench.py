"""The benchmark runner works end to end (tiny shapes, no timing claims)."""

import math

from attnkern import bench


def test_bench_smoke_runs_every_implementation():
    results = bench.run(["covpool"], smoke=True, compile=False, device="cpu", log=open("/dev/null", "w"))
    names = {r.impl for r in results}
    assert names == {"seed", "plain PyTorch", "attnkern"}
    for r in results:
        assert r.fwd_ms > 0 and r.fwd_bwd_ms > 0 and not math.isnan(r.peak_mib)
    table = bench.markdown(results)
    assert table.count("| covpool+sqrtm |") == len(results)
    assert "1.0× / 1.0×" in table  # attnkern's own row, relative to itself


def test_peak_memory_sees_an_allocation():
    import torch

    with bench.PeakMemory("cpu") as peak:
        buf = torch.ones(16, 2**20)  # 64 MiB, written
        del buf
    assert peak.mib > 48
