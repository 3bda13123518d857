"""The compiled CUDA kernels' instructions (scripts/sass_check.py on the built extension): the tensor-core
kernels issue HMMA (mma.sync) and LDSM (ldmatrix) on every architecture built, no other kernel issues HMMA,
and ptxas spilled no register (build/ptxas.txt). Needs a build with CUDA and cuobjdump (PATH, CUDA_HOME or
Triton's copy); no GPU."""

import os
import subprocess
import sys

import pytest

import attnkern
from attnkern import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import sass_check  # noqa: E402


@pytest.mark.skipif(not attnkern.build_info()["cuda"], reason="attnkern was built without CUDA kernels")
@pytest.mark.skipif(sass_check.find_cuobjdump() is None, reason="no cuobjdump")
def test_tensor_core_kernels_issue_hmma_and_nothing_spills():
    args = [sys.executable, os.path.join(ROOT, "scripts", "sass_check.py"), "--library", _extension._C.__file__]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "mma_forward_kernel" in run.stdout


def test_the_parsers_read_cuobjdump_and_ptxas_output():
    sass = ("\tarch = sm_90\n\t\tFunction : _Z17mma_forward_kernelv\n"
            "        /*0010*/                   LDSM.16.M88.4 R4, [R2] ;\n"
            "        /*0020*/                   HMMA.16816.F32 R8, R4, R12, R8 ;\n"
            "\t\tFunction : _Z6plainv\n        /*0010*/                   FFMA R1, R2, R3, R4 ;\n")
    assert sass_check.sass_counts(sass) == {("_Z17mma_forward_kernelv", "sm_90"): {"HMMA": 1, "LDSM": 1},
                                            ("_Z6plainv", "sm_90"): {"HMMA": 0, "LDSM": 0}}
    ptxas = ("ptxas info    : Function properties for _Z1av\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
             "ptxas info    : Function properties for _Z1bv\n    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n")
    assert sass_check.spills(ptxas) == ["_Z1bv: 8 bytes spill stores, 4 bytes spill loads"]
