"""Distributed data-parallel training (torch.distributed, gloo, two processes on this machine) of a
model with SOCA, criss-cross attention, DRConv2d and a SwinIR block: each step's gradients and the
final parameters equal those of one process on the same global batch (tests/ddp_train.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import attnkern

from conftest import rel_error

SCRIPT = Path(__file__).resolve().parent / "ddp_train.py"

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _run(args, tmp_path):
    here = str(Path(attnkern.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def test_ddp_gradients_equal_single_process(tmp_path):
    seed = torch.randint(0, 2**31 - 1, ()).item()  # fresh weights and data every run
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
          str(tmp_path / "ddp.pt"), "--seed", str(seed)], tmp_path)
    _run([str(SCRIPT), str(tmp_path / "single.pt"), "--single", "--seed", str(seed)], tmp_path)
    ddp, single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    assert ddp["world"] == 2 and single["world"] == 1
    for step, (got, want) in enumerate(zip(ddp["gradients"], single["gradients"])):
        assert got.keys() == want.keys()
        for layer in ("soca", "criss_cross", "drconv", "swin"):
            keys = [k for k in want if k.startswith(layer + ".")]
            g, w = torch.cat([got[k].flatten() for k in keys]), torch.cat([want[k].flatten() for k in keys])
            assert w.norm() > 0, f"step {step}: {layer} got no gradient"
            assert rel_error(g, w) <= 1e-5, f"step {step}: {layer} gradients differ by {rel_error(g, w):.2e}"
        for k in want:
            assert torch.allclose(got[k], want[k], rtol=1e-4, atol=1e-6), f"step {step}: {k}"
    for k, p in single["parameters"].items():
        assert rel_error(ddp["parameters"][k], p) <= 1e-5, k
