"""Shared test set-up: devices, dtypes, tolerances, and NaN-poisoned allocations."""

import hashlib
import importlib.util
import os
import pathlib
import sys
import tempfile
import zlib

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (see poison_empty)


def _inductor_cache_dir() -> str:
    """torch.compile's cache for this run: one per build of attnkern and forced CPU capability. Inductor's
    cache key covers neither an op's fake kernel (a graph traced against an earlier build replays its
    output shapes and fails its size asserts) nor ATEN_CPU_CAPABILITY (kernels compiled for another
    instruction set give wrong numbers)."""
    package = pathlib.Path(importlib.util.find_spec("attnkern").origin).parent
    key = hashlib.sha256()
    for path in sorted(package.glob("ops/*.py")) + sorted(package.glob("_C*.so")):
        stat = path.stat()
        key.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    for name in ("ATEN_CPU_CAPABILITY", "ATTNKERN_CPU_CAPABILITY"):
        key.update(f"{name}={os.environ.get(name, '')};".encode())
    return os.path.join(tempfile.gettempdir(), f"attnkern-tests-inductor-{key.hexdigest()[:16]}")


os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache_dir())

import pytest
import torch

import attnkern

CUDA = torch.cuda.is_available() and attnkern.build_info()["cuda"]
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
requires_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device (or attnkern built without CUDA)")

# Relative error bounds against a float64 reference (DESIGN.md, "Tests").
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def dtypes_for(device: str):
    """float32/float64 everywhere; float16/bfloat16 where the device runs them natively."""
    return [torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if device == "cuda" else [])


DEVICE_DTYPES = [(d, t) for d in DEVICES for t in dtypes_for(d)]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


@pytest.fixture(autouse=True)
def poison_empty():
    """Every torch.empty (in the kernels too) is filled with NaN, so an element a kernel fails to
    write makes the comparison fail."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(autouse=True)
def cuda_kernels_always():
    """On CUDA the ops' tests test the hand-written kernels, also where the routing table sends the op to
    its plain formulation (attnkern.ops._cuda_routing); tests/test_cuda_routing.py tests that routed
    path (setting "auto"). CPU tensors are not affected."""
    with attnkern.ops.cuda_kernels("always"):
        yield


# Fresh random inputs on every run; ATTNKERN_TEST_SEED=N reproduces a run (its seed is in the header). The
# seed drawn goes into the environment, which pytest-xdist's workers (started after this) inherit: every
# worker of a run draws from the one seed.
SEED = int(os.environ.setdefault("ATTNKERN_TEST_SEED", str(int.from_bytes(os.urandom(4), "little"))))


def pytest_report_header(config):
    return f"attnkern {attnkern.build_info()}; ATTNKERN_TEST_SEED={SEED}"


@pytest.fixture(autouse=True)
def fresh_seed(request):
    torch.manual_seed(SEED + zlib.crc32(request.node.nodeid.encode()))


# ---- the emulated CUDA device (tools/cuda_emulation.py), for the tests that run on it ----------------------

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
# The build of the emulated kernels the tests run on: plain, or a sanitized one (make test-emulated-sanitizers).
EMULATED_VARIANT = os.environ.get("ATTNKERN_EMULATED_VARIANT", "plain")
# The emulator's schedulers to run on: fibers do not exist in a sanitized build.
EMULATED_SCHEDULERS = ["fibers", "threads"] if EMULATED_VARIANT == "plain" else ["threads"]


def load_emulator():
    """The emulated device, loaded into this process (a plain library is built first if needed)."""
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    import cuda_emulation

    return cuda_emulation.load()


@pytest.fixture(scope="module")
def emu():
    return load_emulator()


def assert_compiles_like_eager(layer, x: torch.Tensor, tolerance: float = 1e-6) -> None:
    """The layer under torch.compile(fullgraph=True) gives the eager output and input gradient."""
    compiled = torch.compile(layer, fullgraph=True)
    x_eager, x_comp = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_eager, out_comp = layer(x_eager), compiled(x_comp)
    assert rel_error(out_comp, out_eager) <= tolerance
    out_eager.sum().backward()
    out_comp.sum().backward()
    assert rel_error(x_comp.grad, x_eager.grad) <= tolerance


def assert_same_parameter_gradients(seed: torch.nn.Module, layer: torch.nn.Module) -> None:
    """Parameter by parameter (in the seed's order and names), equal gradients; absolute tolerance too,
    for gradients that are zero up to rounding."""
    for (name, p_seed), p in zip(seed.named_parameters(), layer.parameters()):
        torch.testing.assert_close(p.grad, p_seed.grad, rtol=1e-9, atol=1e-12, msg=name)
