"""CPU capabilities: every version of the vectorised CPU kernels is tested on this machine, and only
the capability namespaces hold wide-vector code.

The vectorised kernels (window attention, gating, the criss-cross softmax numerators) are compiled once
per capability — default (SSE2 / NEON), avx2, avx512 — and the one in use is the best this CPU runs
unless ATTNKERN_CPU_CAPABILITY lowers it (csrc/common/cpu_capability.h). The rest of the suite runs the
version in use; here the kernels' tests run again in a fresh process for each other capability this CPU
can execute.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnkern

CAPABILITIES = ["default", "avx2", "avx512"]
TESTS = Path(__file__).resolve().parent
# The tests of the ops with vectorised CPU kernels; compile/opcheck tests check the registration, which
# does not depend on the capability.
KERNEL_TESTS = ["test_window_attention.py", "test_gating.py", "test_criss_cross.py"]


def run_python(code: str, capability=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("ATTNKERN_CPU_CAPABILITY", None)
    env.pop("TORCH_CPP_LOG_LEVEL", None)  # Ultralytics, once imported by another test, sets it to ERROR: no warnings
    if capability is not None:
        env["ATTNKERN_CPU_CAPABILITY"] = capability
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def capability_in(capability=None) -> subprocess.CompletedProcess:
    return run_python("import attnkern; print(attnkern.build_info()['cpu_capability'])", capability)


BEST = capability_in().stdout.strip()
SUPPORTED = CAPABILITIES[: CAPABILITIES.index(BEST) + 1]


def test_build_info_names_the_capability_in_use():
    assert attnkern.build_info()["cpu_capability"] == torch.ops.attnkern.cpu_capability()
    assert BEST in CAPABILITIES


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_the_variable_lowers_the_capability(capability):
    result = capability_in(capability)
    assert result.returncode == 0, result.stderr
    expected = capability if capability in SUPPORTED else BEST
    assert result.stdout.strip() == expected
    if capability not in SUPPORTED:
        assert "beyond what this CPU" in result.stderr


def test_an_unknown_capability_warns_and_uses_the_best():
    result = capability_in("sse9")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == BEST
    assert "ignoring ATTNKERN_CPU_CAPABILITY=sse9" in result.stderr


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_kernels_on_every_capability(capability):
    """The window-attention, gating and criss-cross tests, forward and backward against the references, with the
    kernels of `capability` (the capability in use here is covered by the rest of the suite)."""
    if capability not in SUPPORTED:
        pytest.skip(f"this CPU runs {BEST} at best")
    if capability == torch.ops.attnkern.cpu_capability():
        pytest.skip("the capability in use: the rest of the suite tests it")
    env = dict(os.environ, ATTNKERN_CPU_CAPABILITY=capability)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", "-k", "not compile and not opcheck",
         *KERNEL_TESTS], cwd=TESTS, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"'cpu_capability': '{capability}'" in result.stdout  # the report header (conftest.py)
    assert re.search(r"\d+ passed", result.stdout)


def _functions_using(pattern: str):
    """Names of the extension's functions whose disassembly matches `pattern`."""
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", attnkern._C.__file__],
                                 capture_output=True, text=True, check=True).stdout
    names, current = set(), None
    for line in disassembly.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            current = header.group(1)
        elif current is not None and re.search(pattern, line):
            names.add(current)
    return names


@pytest.mark.skipif(shutil.which("objdump") is None or not re.match(r"x86_64|AMD64", os.uname().machine),
                    reason="needs objdump and an x86-64 build")
def test_wide_vector_code_only_in_its_capability():
    """AVX code (VEX/EVEX instructions, ymm/zmm registers) only in the cpu_avx2/cpu_avx512 versions, and
    AVX-512 code (zmm or mask registers) only in cpu_avx512: nothing a baseline CPU calls — ATen's or the
    standard library's inline functions included — can hold an instruction it lacks."""
    avx = _functions_using(r"%[yz]mm\d|\tv[a-z]")
    assert avx, "no AVX code at all: the capability versions were not compiled"
    assert all(re.search(r"cpu_avx(2|512)::", name) for name in avx), sorted(
        name for name in avx if not re.search(r"cpu_avx(2|512)::", name))[:5]
    avx512 = _functions_using(r"%zmm\d|%k[1-7]")
    assert avx512 and all("cpu_avx512::" in name for name in avx512), sorted(
        name for name in avx512 if "cpu_avx512::" not in name)[:5]
