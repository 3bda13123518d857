"""The emulated CUDA device itself (csrc/emulation, tools/cuda_emulation.py), through the kernels of
tests/emulation/emulator_checks.cu: built-in variables, block order, barriers, poisoned dynamic shared
memory, CUDA's max/min, the launch checks and device attributes of each target; and, in the sanitized
builds (``make test-emulated-sanitizers``), that a planted race and planted overruns in copies of real
kernels (tests/emulation/planted_bugs.cu) are reported."""

import itertools
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import EMULATED_SCHEDULERS, EMULATED_VARIANT as VARIANT, TOOLS

T = torch.ops.attnkern_emulation_tests


@pytest.fixture(params=EMULATED_SCHEDULERS)
def scheduler(request, emu):
    with emu.settings(scheduler=request.param):
        yield request.param


def test_every_thread_of_a_3d_launch_sees_its_indices(scheduler):
    grid, block = (3, 2, 2), (4, 3, 2)
    rows = T.indices(*grid, *block).tolist()
    expected = [[tx, ty, tz, bx, by, bz, *block, *grid]
                for bz, by, bx in itertools.product(range(grid[2]), range(grid[1]), range(grid[0]))
                for tz, ty, tx in itertools.product(range(block[2]), range(block[1]), range(block[0]))]
    assert rows == expected


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffled"])
def test_block_order(emu, order):
    with emu.settings(order=order, seed=7):
        first, second = T.block_order(40).tolist(), T.block_order(40).tolist()
    assert sorted(first) == list(range(40))
    if order == "forward":
        assert first == second == list(range(40))
    elif order == "reverse":
        assert first == second == list(range(39, -1, -1))
    else:  # a different permutation for every launch
        assert first != list(range(40)) and first != second


@pytest.mark.parametrize("threads", [1, 37, 256])
def test_barrier(scheduler, threads):
    assert (T.barrier_sum(3, threads) == threads * (threads - 1) // 2).all()


def test_threads_passing_different_numbers_of_barriers_are_reported(scheduler):
    with pytest.raises(RuntimeError, match="passed different numbers of __syncthreads"):
        T.divergent_barrier()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dynamic_shared_memory_is_poisoned_before_every_block(scheduler, dtype):
    out = T.unwritten_shared(100, dtype)  # block 0 writes it after reading; block 1 must see NaN again
    assert out.isnan().all()


@pytest.mark.parametrize("dims, message", [
    ((1, 1, 1, 1025, 1, 1), r"blockDim.x = 1025 is outside \[1, 1024\]"),
    ((1, 1, 1, 1, 1, 65), r"blockDim.z = 65 is outside \[1, 64\]"),
    ((1, 1, 1, 32, 16, 4), "2048 threads, more than 1024"),
    ((1, 65536, 1, 1, 1, 1), r"gridDim.y = 65536 is outside \[1, 65535\]"),
    ((1, 1, 65536, 1, 1, 1), r"gridDim.z = 65536 is outside \[1, 65535\]"),
    ((0, 1, 1, 1, 1, 1), r"gridDim.x = 0 is outside"),
    ((1, 1, 1, 0, 1, 1), r"blockDim.x = 0 is outside"),
])
def test_invalid_launch_configurations_throw(emu, dims, message):
    with pytest.raises(RuntimeError, match=message):
        T.launch(*dims, 0, 0)


def test_launch_dimensions_given_as_integers_are_checked_before_narrowing(emu):
    with pytest.raises(RuntimeError, match=r"gridDim.x = 2147483648 is outside"):
        T.launch_blocks(2 ** 31)
    for blocks in (2 ** 32 + 1, 0, -3):  # nvcc would launch 1 block for 2^32 + 1
        with pytest.raises(RuntimeError, match="does not fit a launch dimension"):
            T.launch_blocks(blocks)
    assert T.launch_blocks(5) == 1


TARGETS = {"sm_80": (8, 0, 108, 163 * 1024), "sm_86": (8, 6, 84, 99 * 1024), "sm_90": (9, 0, 132, 227 * 1024)}
ATTR = {"max_threads": 1, "smem_per_block": 8, "warp": 10, "sms": 16, "major": 75, "minor": 76, "smem_optin": 97}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_dynamic_shared_memory_limits_of_each_target(emu, target):
    major, minor, sms, optin = TARGETS[target]
    with emu.settings(target=target):
        attributes = [T.device_attribute(ATTR[k]) for k in ("major", "minor", "sms", "smem_optin")]
        assert attributes == [major, minor, sms, optin]
        assert [T.device_attribute(ATTR[k]) for k in ("max_threads", "smem_per_block", "warp")] == [1024, 48 * 1024, 32]
        assert T.launch_without_opt_in(48 * 1024) == 1  # the default limit needs no opt-in
        with pytest.raises(RuntimeError, match=r"49153 bytes of dynamic shared memory need cudaFuncSetAttribute"):
            T.launch_without_opt_in(48 * 1024 + 1)
        assert T.launch(1, 1, 1, 32, 1, 1, optin, optin) == 1  # opted in up to the limit
        with pytest.raises(RuntimeError, match=f"more than the {target} limit of {optin}"):
            T.launch(1, 1, 1, 32, 1, 1, optin + 1, 0)
        with pytest.raises(RuntimeError, match="invalid argument.*cudaFuncSetAttribute"):
            T.launch(1, 1, 1, 32, 1, 1, 1024, optin + 1)  # the attribute itself is refused beyond the limit


def test_cuda_max_and_min_are_fmax_and_fmin(emu):
    nan, inf = math.nan, math.inf
    a = torch.tensor([1.0, nan, nan, 3.0, -inf, 2.0])
    b = torch.tensor([2.0, 1.0, nan, -inf, 0.5, 2.0])
    for dtype in (torch.float32, torch.float64):
        out = T.max_min(a.to(dtype), b.to(dtype))
        torch.testing.assert_close(out[0], torch.fmax(a, b).to(dtype), equal_nan=True)
        torch.testing.assert_close(out[1], torch.fmin(a, b).to(dtype), equal_nan=True)


def test_settings_are_checked(emu):
    for key, value in [("order", "sideways"), ("target", "sm_75"), ("seed", "-1"), ("scheduler", "gpu"),
                       ("grid_stride_blocks", "x"), ("multiprocessors", "1025"), ("colour", "red")]:
        with pytest.raises(ValueError):
            emu.set(**{key: value})
    if VARIANT != "plain":
        with pytest.raises(ValueError, match="not available in a sanitized build"):
            emu.set(scheduler="fibers")


def test_the_fibers_run_threads_in_order_so_a_missing_barrier_gives_wrong_values(emu):
    """On fibers the threads of a barrier interval run one after another: thread 0 of the planted race reads
    its partner's partial sum before the partner has written it, so the row means come out wrong."""
    if VARIANT != "plain":
        pytest.skip("fibers are not available in a sanitized build")
    x = torch.rand(4, 1000, dtype=torch.float64) + 1
    with emu.settings(scheduler="fibers", order="forward"):
        planted = torch.ops.attnkern_planted_bugs.planted_missing_barrier(x)
    assert not torch.allclose(planted, x.mean(1))


def test_a_misaligned_vector_copy_is_reported(emu):
    """A 16-byte copy from an address not aligned to 16 faults on a GPU ("misaligned address"); the emulator
    raises. The planted copy takes its width from the length alone: a tensor at the start of its storage
    copies, a view one element in is refused."""
    x = torch.randn(65)
    P = torch.ops.attnkern_planted_bugs
    assert torch.equal(P.planted_misaligned_copy(x[:64]), x[:64])
    with pytest.raises(RuntimeError, match="16-byte copy .* not both aligned"):
        P.planted_misaligned_copy(x[1:])


# ---- planted bugs, each in a sanitized subprocess -----------------------------------------------------

_CHILD = """
import sys, torch
sys.path.insert(0, {tools!r})
import cuda_emulation
cuda_emulation.load()
torch.manual_seed(0)
P = torch.ops.attnkern_planted_bugs
{call}
print("finished without a report")
"""


def run_child(call: str) -> subprocess.CompletedProcess:
    code = _CHILD.format(tools=TOOLS, call=call)
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                          timeout=600)


# (the sanitized build that reports it, the call, the function the report must name). The second race:
# thread 0 overwrites scratch[0] for the second reduction while the others may still read the first one's
# result from it — a race whichever order the OS runs the threads in.
PLANTED_BUGS = [
    ("tsan", "P.planted_missing_barrier(torch.rand(3, 1000, dtype=torch.float64))", "racy_block_sum"),
    ("tsan", "P.planted_reused_scratch(torch.rand(3, 1000, dtype=torch.float64))", "unfinished_block_reduce"),
    ("asan", "q, v = torch.randn(1, 2, 3, 4), torch.randn(1, 5, 3, 4)\nP.planted_shared_overrun(q, q, v)",
     "overrunning_block_reduce"),
    ("asan", "P.planted_global_overrun(torch.randn(2, 5, 5))", "triuvec_overrun_kernel"),
]
# Each sanitizer's report and exit code (tools/cuda_emulation.py's sanitizer_env).
REPORTS = {"tsan": ("WARNING: ThreadSanitizer: data race", 66),
           "asan": ("ERROR: AddressSanitizer: heap-buffer-overflow", 67)}


@pytest.mark.parametrize("variant, call, where", PLANTED_BUGS, ids=[where for _, _, where in PLANTED_BUGS])
def test_the_sanitized_build_reports_the_planted_bug(variant, call, where):
    if VARIANT != variant:
        pytest.skip(f"needs the {variant} build: make test-emulated-sanitizers")
    result = run_child(call)
    report, exit_code = REPORTS[variant]
    assert report in result.stderr, result.stderr[-5000:]
    assert where in result.stderr
    assert "planted_bugs.cu:" in result.stderr  # the trace's file and line: the builds keep line tables (-g1)
    assert result.returncode == exit_code


@pytest.mark.skipif(VARIANT == "plain", reason="needs a sanitized build: make test-emulated-sanitizers")
def test_the_real_kernels_of_the_planted_copies_run_without_a_report():
    """The control of the planted tests: the same calls on the real kernels, in the same kind of process."""
    result = run_child("E = torch.ops.attnkern_emulated\n"
                       "E.covpool(torch.rand(3, 4, 1000, dtype=torch.float64))\n"
                       "E.channel_pool(torch.rand(1, 3, 20, 50, dtype=torch.float64))\n"
                       "q, v = torch.randn(1, 2, 3, 4), torch.randn(1, 5, 3, 4)\n"
                       "E.criss_cross_attention(q, q, v)\n"
                       "E.triuvec(torch.randn(2, 5, 5))")
    assert result.returncode == 0, result.stderr[-5000:]
    assert "finished without a report" in result.stdout
    assert "Sanitizer" not in result.stderr
