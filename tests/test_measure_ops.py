"""benchmarks/measure_ops.py: the ops it times run both ways and agree, and each measured row meets the
performance model's row for the same op, shape, direction and dtype. On the CPU (--smoke shapes): the
timings themselves are for a GPU (scripts/gpu_check.sh)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks are scripts, not a package
import measure_ops as mo  # noqa: E402


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_smoke_rows_time_both_paths_of_every_family(dtype, tolerance):
    rows = mo.measure(sorted(mo.OPS), "cpu", mo.DTYPES[dtype], smoke=True, budget_s=0.01)
    assert [(r["family"], r["direction"]) for r in rows] == [
        (family, direction) for family, _, _ in mo.SMOKE_SHAPES for direction in ("fwd", "bwd")]
    assert {r["family"] for r in rows} == set(mo.OPS)
    for r in rows:
        if r["direction"] == "fwd":
            assert r["kernel_ms"] > 0 and r["plain_ms"] > 0, r
        else:  # forward + backward less the forward: not negative
            assert r["kernel_ms"] >= 0 and r["plain_ms"] >= 0, r
        assert r["difference"] < tolerance, r  # the kernel and the plain formulation timed give one result
    table = mo.markdown(rows, "smoke")
    assert table.count("\n| ") == 1 + len(rows)  # the header and a line a row
    assert "| — | — | — |" in table  # no model columns for the smoke shapes


def test_every_measured_shape_has_the_models_figures():
    pm = mo.perf_model
    shapes = [(f, c) for f, c, _, _ in pm.SHAPES if f in mo.OPS]
    assert {f for f, _ in shapes} == set(mo.OPS)
    rows = [dict(family=f, op=mo.OPS[f][0], case=c, direction=d, kernel_ms=1.0, plain_ms=2.0, difference=0.0)
            for f, c in shapes for d in ("fwd", "bwd")]
    table, _ = pm.load_ptxas(None)
    modelled = {(r["op"], r["case"], r["direction"]): r for r in pm.evaluate(pm.Device("h200"), table, "bfloat16")}
    for r in mo.with_model(rows, "h200", "bfloat16"):
        m = modelled[(r["op"], r["case"], r["direction"])]
        assert r["model_kernel_ms"] == pytest.approx(m["time"] * 1e3)
        assert r["model_plain_ms"] == pytest.approx(m["plain"] * 1e3)
        assert r["model_kernel_ms"] > 0
    line = mo.markdown(mo.with_model(rows[:1], "h200", "bfloat16"), "model").splitlines()[-1]
    assert f"{rows[0]['case']} | fwd | 1,000.0 | 2,000.0 | 0.50 |" in line
