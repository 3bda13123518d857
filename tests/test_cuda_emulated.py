"""Every CUDA kernel of attnkern, run on the CPU by the emulated device (csrc/emulation,
tools/cuda_emulation.py): the unmodified csrc/*/*_cuda.cu compiled by the host compiler, each op called as
torch.ops.attnkern_emulated.* on CPU tensors — forward and backward, in float64, float32, float16 and
bfloat16 — against the pure-PyTorch references and the CPU kernels (the cases are in kernel_cases.py), at
shapes that reach every branch of the kernels and of their host code: ragged tiles, loops over more
elements than threads, grid-stride loops that wrap, 3-D grids, one-block and batched-GEMM Newton–Schulz,
shared memory at its limits, empty batches; and with the blocks in forward, reverse and shuffled order.

It checks values, the paths taken (the emulator's launch log) and launch configurations (the emulator
refuses what a GPU would); run under ThreadSanitizer and AddressSanitizer (make test-emulated-sanitizers)
it checks races and out-of-bounds accesses too. It says nothing about speed.
"""

import math

import pytest
import torch

from attnkern import reference
from conftest import EMULATED_VARIANT as VARIANT, SEED, load_emulator
from kernel_cases import (CASES, DTYPES, EMPTY_CASES, GRID_STRIDE_CASES, Backend, Inputs, Output, check,
                          criss_cross_attention_case, cuda_kernels, grads, grid_stride_kernels, rel_error,
                          TOLERANCE, sqrtm_case, tensor_core_kernels, window_attention_case)

EMULATED = Backend(torch.ops.attnkern_emulated, "cpu", "emulated")
E = torch.ops.attnkern_emulated  # the CUDA kernels, emulated
K = torch.ops.attnkern  # the CPU kernels

slow_under_sanitizers = pytest.mark.skipif(
    VARIANT != "plain", reason="minutes under a sanitizer; the plain build runs it")


@pytest.fixture(scope="module", autouse=True)
def emu():
    emulator = load_emulator()
    with emulator.settings(order="forward", target="sm_86", grid_stride_blocks=0):
        yield emulator


def launch_counts(emu):
    """Launches and blocks run so far, per kernel."""
    return {key: (launches, blocks) for key, (launches, blocks, _) in emu.launches().items()}


def offset_view(offset, *shape, dtype, fill=torch.randn):
    """A tensor of `shape` starting `offset` elements into its storage (a view: .contiguous() keeps it), so that
    its address is aligned to fewer bytes than a fresh tensor's."""
    return fill(math.prod(shape) + offset).to(dtype)[offset:].view(*shape)


def launched_since(emu, before):
    """Launches and blocks per kernel since the launch_counts() `before`."""
    return {key: (launches - before.get(key, (0, 0))[0], blocks - before.get(key, (0, 0))[1])
            for key, (launches, blocks) in launch_counts(emu).items() if launches > before.get(key, (0, 0))[0]}


# Under a sanitizer (minutes per dtype) the kernel matrix runs at the two ends of the element size: float64
# (the largest shared-memory footprints) and float16; the plain build runs all four dtypes.
KERNEL_DTYPES = DTYPES if VARIANT == "plain" else [torch.float64, torch.float16]
# and the cases (kernel_cases.Case.sanitized) whose blocks are not too many OS threads for a sanitizer
KERNEL_CASES = [c for c in CASES if VARIANT == "plain" or c.sanitized]

_RAN = set()  # the (case, dtype) pairs of test_kernels that passed, for test_every_kernel_ran_in_every_dtype


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("case", [c.param() for c in KERNEL_CASES])
def test_kernels(case, dtype):
    check(case.run(EMULATED, dtype, seed=SEED), dtype)
    _RAN.add((case.id, dtype))


# ---- branches that need more than a shape -----------------------------------------------------------------


@pytest.mark.parametrize("dtype, target, n, forward, backward", [
    # the size threshold: one 64×64 product tile
    (torch.float32, "sm_90", 64, True, True), (torch.float32, "sm_90", 65, False, False),
    # the shared memory of the forward (4 matrices, rows n | 1 apart) and the backward (7)
    (torch.float64, "sm_90", 64, True, False), (torch.float64, "sm_90", 63, True, True),
    (torch.float32, "sm_86", 59, True, True), (torch.float32, "sm_86", 60, True, False),
    (torch.float64, "sm_86", 41, True, True), (torch.float64, "sm_86", 42, True, False),
    (torch.float64, "sm_86", 55, True, False), (torch.float64, "sm_86", 56, False, False),
], ids=str)
def test_sqrtm_one_block_up_to_one_tile_and_the_targets_shared_memory(emu, dtype, target, n, forward, backward):
    """The one-block kernels run n ≤ 64 (each product one tile of one 4×4 cell a thread), while their matrices
    fit the target's opt-in shared memory (sm_86 99 KiB, sm_90 227 KiB): 4·n·(n | 1) + 256 accumulators in
    the forward, 7·n·(n | 1) + 256 in the backward; beyond, the op runs the batched-GEMM iteration (both
    ways interchange: the saved iterates have one layout)."""
    before = launch_counts(emu)
    with emu.settings(target=target):
        check(sqrtm_case(EMULATED, dtype, Inputs(SEED + n), B=2, n=n, iters=2, zero_trace=False), dtype)
    launched = launched_since(emu, before)
    assert ("covpool_cuda.cu:sqrtm_forward_kernel" in launched) == forward
    assert ("covpool_cuda.cu:sqrtm_backward_kernel" in launched) == backward


@pytest.mark.parametrize("case", [c.param() for c in GRID_STRIDE_CASES])
def test_grid_stride_loops_that_wrap(emu, case):
    """With the grid-stride kernels' grids capped at 2 blocks (512 threads), every thread takes several
    elements; the results equal the uncapped ones bit for bit."""
    uncapped = case.run(EMULATED, torch.float32, seed=SEED)
    before = launch_counts(emu)
    with emu.settings(grid_stride_blocks=2):
        capped = case.run(EMULATED, torch.float32, seed=SEED)
    check(capped, torch.float32)
    for a, b in zip(capped, uncapped):
        assert torch.equal(a.got.nan_to_num(), b.got.nan_to_num()), a.name
    launched = {k: v for k, v in launched_since(emu, before).items() if k in grid_stride_kernels()}
    assert launched and all(blocks <= 2 * launches for launches, blocks in launched.values())
    assert any(blocks == 2 * launches for launches, blocks in launched.values()), "no grid-stride loop wrapped"


@slow_under_sanitizers  # every case four times: 80 s an order under ThreadSanitizer
@pytest.mark.parametrize("order", ["reverse", "shuffled"])
def test_results_do_not_depend_on_block_or_thread_order(emu, order):
    """Every kernel writes each result once, in a fixed order: with the blocks (and, on fibers, the threads
    between two barriers) run last to first or shuffled, every output is the same bit for bit."""
    for case in KERNEL_CASES:
        forward = case.run(EMULATED, torch.float32, seed=SEED + 1)
        with emu.settings(order=order, seed=SEED):
            other = case.run(EMULATED, torch.float32, seed=SEED + 1)
        for a, b in zip(forward, other):
            assert torch.equal(a.got.nan_to_num(), b.got.nan_to_num()), f"{case.id}: {a.name}"


@pytest.mark.skipif(VARIANT != "plain", reason="fibers are not available in a sanitized build")
@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_results_do_not_depend_on_the_scheduler(emu, case):
    """The fibers of the plain build and the OS threads of the sanitized builds give the same bits (a case a
    test: on threads the whole matrix takes a minute and a half, which pytest-xdist can then share out)."""
    with emu.settings(scheduler="fibers"):
        fibers = case.run(EMULATED, torch.float64, seed=SEED + 2)
    with emu.settings(scheduler="threads"):
        threads = case.run(EMULATED, torch.float64, seed=SEED + 2)
    for a, b in zip(fibers, threads):
        assert torch.equal(a.got.nan_to_num(), b.got.nan_to_num()), f"{case.id}: {a.name}"


# ---- limits ---------------------------------------------------------------------------------------------


def test_criss_cross_attention_runs_products_around_a_softmax(emu):
    """The fused attention: q and k pixel-major (one launch), the energies and outputs as GEMMs, one softmax
    kernel, v (into both layouts: small, so the rows take one call) and the column outputs transposed (forward);
    the backward adds the softmax backward, the transposes of g, v and the column ∂v, and one launch summing ∂q's
    and ∂k's rows and columns back into the image layout; a grid of 32×8-thread tiles, one warp a pixel."""
    before = launch_counts(emu)
    check(criss_cross_attention_case(EMULATED, torch.float32, Inputs(SEED + 3), B=2, Cq=40, H=33, W=9, Cv=37),
          torch.float32)
    launched = launched_since(emu, before)
    tiles = 2 * 33 * 2 * 1  # B·H × channel tiles × w tiles
    assert launched["criss_cross_cuda.cu:pixel_major_kernel"] == (2, 2 * 2 * tiles)
    assert launched["criss_cross_cuda.cu:pixel_major_sum_kernel"] == (1, 2 * tiles)
    assert launched["criss_cross_cuda.cu:softmax_kernel"] == (1, 2 * 33 * 9 // 8 + 1)
    assert launched["criss_cross_cuda.cu:softmax_backward_kernel"] == (1, 2 * 33 * 9 // 8 + 1)
    assert launched["criss_cross_cuda.cu:transpose_kernel"][0] == 5  # v, column outputs; g, v, column ∂v


@pytest.mark.parametrize("dtype", DTYPES if VARIANT == "plain" else [torch.float16], ids=str)
@pytest.mark.parametrize("multiprocessors, B, Cv, H, vec, joint_vec",
                         [(1, 2, 120, 3, 0, None), (2, 2, 120, 3, 2, None), (0, 2, 120, 3, 1, None),
                          (1, 2, 15, 3, 1, None), (1, 1, 120, 3, 2, 0)])
def test_criss_cross_layout_changes_copy_as_wide_as_rows_and_grid_allow(emu, dtype, multiprocessors, B, Cv, H, vec,
                                                                         joint_vec):
    """v into the column layout and the column outputs back: a block a tile of 32·V image rows × 32 columns, V
    values a lane in one access — the widest (up to 16 bytes; 0 here) that divides C·H and leaves a wave of
    tiles (8 an SM). At B = 2 the rows take one call: v, g and v one launch each (the row layout written too), and
    the column outputs and column ∂v back: C·H = 360 on 1 SM, each dtype's widest; on 2 SMs V = 2 (at V = 4, 12
    tiles < 16); on the target's 84, V = 1; C·H = 45, V = 1. At B = 1 (W ≠ H: the rows a call a sample) g and v go
    into the column layout in one launch of twice the planes: on 1 SM each dtype's widest, the others V = 2."""
    W = 33
    widest = 16 // torch.empty((), dtype=dtype).element_size()
    before = launch_counts(emu)
    with emu.settings(multiprocessors=multiprocessors):
        check(criss_cross_attention_case(EMULATED, dtype, Inputs(SEED + 6), B=B, Cq=2, H=H, W=W, Cv=Cv), dtype)

    def tiles(planes, V):
        return planes * math.ceil(Cv * H / (32 * (V or widest))) * math.ceil(W / 32)

    expected = (5, 5 * tiles(B, vec)) if joint_vec is None else (4, 3 * tiles(B, vec) + tiles(2 * B, joint_vec))
    assert launched_since(emu, before)["criss_cross_cuda.cu:transpose_kernel"] == expected


def criss_cross_calls(event: str, seed: int, B: int, Cq: int, H: int, W: int, Cv: int):
    """The fused attention checked at these sizes (float32), then the profiler's count of `event` (an ATen call)
    in a forward and in a backward on fresh inputs of the same sizes."""
    check(criss_cross_attention_case(EMULATED, torch.float32, Inputs(seed), B=B, Cq=Cq, H=H, W=W, Cv=Cv),
          torch.float32)
    rng = Inputs(seed + 1)
    q, k = (rng.randn(B, Cq, H, W, dtype=torch.float32) for _ in range(2))
    v, g = (rng.randn(B, Cv, H, W, dtype=torch.float32) for _ in range(2))

    def calls(op, *args):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            result = op(*args)
        return result, sum(e.name == event for e in prof.events())

    (out, lse), forward = calls(E.criss_cross_attention, q, k, v)
    _, backward = calls(E.criss_cross_attention_backward, g, q, k, v, out, lse)
    return forward, backward


@pytest.mark.parametrize("B, H, W, forward_calls, backward_calls",
                         [(1, 3, 5, 1, 1), (2, 3, 5, 0, 0), (5, 3, 5, 0, 0), (1, 4, 4, 0, 0)])
def test_criss_cross_row_products_in_one_call_where_launches_outlast_the_copies(emu, B, H, W, forward_calls,
                                                                               backward_calls):
    """The row products (out; dS and ∂v) one GEMM a sample over the inputs where they lie, or one over every
    sample's rows copied into the row layout (written by the transpose into the column layout, and added by the
    one back) where the launches that saves (B a product in square images, whose rows and columns are one call;
    B − 1 beside other shapes) outlast the copy's pass (tiny here): the per-sample `baddbmm` of out and ∂v
    counted by the profiler (dS takes the same branch as ∂v); the values checked."""
    assert criss_cross_calls("aten::baddbmm_", SEED + 9, B=B, Cq=2, H=H, W=W, Cv=3) == (forward_calls,
                                                                                       backward_calls)


@pytest.mark.parametrize("H, W, forward_calls, backward_calls", [(4, 4, 2, 5), (4, 5, 3, 9), (5, 4, 3, 9)])
def test_criss_cross_square_images_take_row_and_column_products_in_one_call(emu, H, W, forward_calls,
                                                                           backward_calls):
    """Where H = W the row matrices [B·H, W, ·] and the column matrices [B·W, H, ·] have one shape: the energies
    (and, in the backward, ∂q and ∂k) are one GEMM over both, the two halves of one buffer, and so are the products
    of v and g (the outputs; dS and ∂v), the rows of one sample taking one call there. Counted by the profiler at
    B = 1: square, forward the energies and the outputs, backward the energies, dS, ∂v, ∂q and ∂k; otherwise (the
    row products of v and g a `baddbmm` over the inputs) forward the energies by rows and by columns and the
    column outputs, backward the energies twice, dS by rows and by columns, the column ∂v, ∂q twice and ∂k twice.
    The values checked."""
    assert criss_cross_calls("aten::bmm", SEED + 11, B=1, Cq=3, H=H, W=W, Cv=2) == (forward_calls, backward_calls)


def test_window_attention_backward_groups_run_several_windows(emu):
    """More than 64 windows: 64 blocks per head, some running two windows one after the other; their 64 partial
    bias gradients summed by one launch, a block for 64 of the N² = 64² elements."""
    before = launch_counts(emu)
    check(window_attention_case(EMULATED, torch.float32, Inputs(SEED + 4), B=3, H=40, W=40, heads=1, d=3, window=8,
                                shift=4), torch.float32)
    launched = launched_since(emu, before)
    assert launched["window_attention_cuda.cu:backward_kernel"] == (1, 64)
    assert launched["window_attention_cuda.cu:sum_bias_partials_kernel"] == (1, 64 * 64 // 64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("multiprocessors, heads, blocks", [(1, 1, 50), (80, 2, 200)])
def test_window_attention_tensor_core_backward_groups_run_several_windows(emu, dtype, multiprocessors, heads, blocks):
    """The tensor-core backward runs min(windows, max(64, 3·SMs/heads)) window groups a head, as even as that
    allows, a block a (group, head). 100 windows: on 1 SM (one head) 64 wanted, so 50 groups of two windows,
    each block running both one after the other and adding both into its own bias-gradient partial; on 80 SMs
    with two heads 120 wanted, so 100 groups of one. The partials summed by one launch of heads·N²/64 blocks."""
    before = launch_counts(emu)
    with emu.settings(multiprocessors=multiprocessors):
        check(window_attention_case(EMULATED, dtype, Inputs(SEED + 5), B=1, H=40, W=40, heads=heads, d=4, window=4,
                                    shift=2), dtype)
    launched = launched_since(emu, before)
    assert launched["window_attention_cuda.cu:mma_backward_kernel"] == (1, blocks)
    assert launched["window_attention_cuda.cu:sum_bias_partials_kernel"] == (1, heads * 16 * 16 // 64)


# N = 49 in the plain build only: 59–67 s a dtype under ThreadSanitizer on 100 windows (CI at 69386a2)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("window", [5, pytest.param(7, marks=slow_under_sanitizers)])
def test_window_attention_tensor_core_backward_pads_the_bias_rows_once_a_block(emu, dtype, window):
    """Where N is not a multiple of 8 (25, 49 tokens) the tensor-core backward stages the head's bias through its P
    and dS tiles into a tile of rows mma_backward_bias_ld(N) = Np + 8 apart, −inf past key N, once a block: on 1 SM
    66 windows run as 33 groups of two (64 wanted), each block's second window reading the tile after its first
    overwrote the staging tiles; the output and both gradients (the bias's summed in registers over the block's
    windows) match the reference."""
    before = launch_counts(emu)
    with emu.settings(multiprocessors=1):
        check(window_attention_case(EMULATED, dtype, Inputs(SEED + 7), B=1, H=6 * window, W=11 * window, heads=1,
                                    d=4, window=window, shift=window // 2), dtype)
    assert launched_since(emu, before)["window_attention_cuda.cu:mma_backward_kernel"] == (1, 33)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_window_attention_tensor_core_backward_stages_each_windows_mask(emu, dtype):
    """With an explicit mask the tensor-core backward copies each window's [N, N] of it into a shared tile of Np
    keys (0 past N) before the window's logits, and without a bias it walks a tile of zeros, −inf past key N: on
    1 SM 66 windows of 25 tokens, each with a mask of its own, run as 33 groups of two, each block's second
    window reading its mask where its first window's lay; the output and ∂qkv match the reference."""
    before = launch_counts(emu)
    with emu.settings(multiprocessors=1):
        check(window_attention_case(EMULATED, dtype, Inputs(SEED + 8), B=1, H=30, W=55, heads=1, d=4, window=5,
                                    shift=0, bias=False, mask="random"), dtype)
    assert launched_since(emu, before)["window_attention_cuda.cu:mma_backward_kernel"] == (1, 33)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_window_attention_bias_gradient_is_one_launch_in_the_bias_dtype(emu, dtype):
    """The partial bias gradients are summed over the window groups and rounded to the bias dtype by one kernel
    (no ATen reduction, no cast after it), matching the float64 reference."""
    rng = Inputs(SEED + 6)
    B, H, W, heads, d, window, shift = 2, 16, 16, 2, 8, 4, 2
    qkv = rng.randn(B, H, W, 3, heads, d, dtype=dtype)
    bias = rng.randn(heads, window ** 2, window ** 2, dtype=dtype)
    g = rng.randn(B, H, W, heads, d, dtype=dtype)
    out, lse = E.window_attention(qkv, bias, None, window, shift, d ** -0.5)
    before = launch_counts(emu)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _, grad_bias = E.window_attention_backward(g, qkv, bias, None, out, lse, window, shift, d ** -0.5)
    aten = {e.name for e in prof.events()}
    assert not aten & {"aten::sum", "aten::to", "aten::_to_copy", "aten::copy_"}, aten
    assert launched_since(emu, before)["window_attention_cuda.cu:sum_bias_partials_kernel"][0] == 1
    assert grad_bias.dtype == dtype
    ref = grads(lambda q, b: reference.window_attention(q, b, window, shift, None, d ** -0.5), [qkv, bias], [g])[1]
    assert rel_error(grad_bias, ref) < TOLERANCE[dtype]


def test_window_attention_shared_memory_limit_is_refused(emu):
    """A window whose arrays do not fit the target's shared memory is refused with a clear error."""
    qkv = torch.randn(1, 16, 16, 3, 1, 100, dtype=torch.float64)  # N = 256 tokens, d = 100: 4·256·101 doubles
    with emu.settings(target="sm_86"), pytest.raises(RuntimeError, match="bytes of shared memory per block"):
        E.window_attention(qkv, None, None, 16, 0, 0.1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d, offset", [(16, 0), (16, 1), (16, 2), (12, 0), (6, 0)])
def test_window_attention_tensor_cores_copy_as_wide_as_alignment_allows(emu, dtype, d, offset):
    """The tensor-core forward copies 8, 4, 2 or 1 channels at once, as d and the addresses of qkv allow: a qkv
    that starts `offset` elements into its storage (a view; .contiguous() keeps it) gives the same result."""
    qkv = offset_view(offset, 1, 8, 8, 3, 2, d, dtype=dtype)
    bias = torch.randn(2, 16, 16).to(dtype)
    before = launch_counts(emu)
    out, lse = E.window_attention(qkv, bias, None, 4, 2, d ** -0.5)
    assert launched_since(emu, before)["window_attention_cuda.cu:mma_forward_kernel"] == (1, 8)
    ref = reference.window_attention(qkv.double(), bias.double(), 4, 2, None, d ** -0.5)
    assert rel_error(out, ref) <= TOLERANCE[dtype]
    torch.testing.assert_close(out, E.window_attention(qkv.clone(), bias, None, 4, 2, d ** -0.5)[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d, offset", [(16, 0), (16, 1), (12, 0), (6, 0), (40, 1)])
def test_window_attention_tensor_core_backward_copies_as_wide_as_alignment_allows(emu, dtype, d, offset):
    """The tensor-core backward copies (and sums D_i = dO_i·o_i over) 8, 4, 2 or 1 channels at once, as d and
    the addresses of qkv and the output gradient allow: 2, 4, 16 or 32 threads a token (d = 40 one channel at
    a time: two steps a thread); views `offset` elements into their storage give the reference's gradients."""
    qkv, grad = offset_view(offset, 1, 8, 8, 3, 2, d, dtype=dtype), offset_view(offset, 1, 8, 8, 2, d, dtype=dtype)
    bias = torch.randn(2, 16, 16).to(dtype)
    scale = d ** -0.5
    out, lse = E.window_attention(qkv, bias, None, 4, 2, scale)
    before = launch_counts(emu)
    got = E.window_attention_backward(grad, qkv, bias, None, out, lse, 4, 2, scale)
    assert launched_since(emu, before)["window_attention_cuda.cu:mma_backward_kernel"][0] == 1
    expected = grads(lambda q, b: reference.window_attention(q, b, 4, 2, None, scale), [qkv, bias], [grad])
    for name, g, e in zip(("qkv", "bias"), got, expected):
        assert rel_error(g, e) <= TOLERANCE[dtype], name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("window, heads, offset", [(4, 2, 0), (4, 2, 3), (7, 3, 0), (7, 3, 5)])
def test_window_attention_tensor_cores_copy_the_bias_16_bytes_at_a_time(emu, dtype, window, heads, offset):
    """Both tensor-core kernels copy a head's [N, N] bias into shared memory 16 bytes at a time, the tile as far
    past a 16-byte boundary as the head's bias (N = 49: each head's differs) and the values before the first
    boundary and after the last one at a time (the backward, which reads key pairs, re-lays a tile that starts on
    an odd element: offset 3 at N = 16): a bias `offset` elements into its storage (a view) gives the reference's
    values and gradients."""
    N, shift, d = window * window, window // 2, 8
    side = 2 * window
    qkv, grad = torch.randn(1, side, side, 3, heads, d).to(dtype), torch.randn(1, side, side, heads, d).to(dtype)
    bias = offset_view(offset, heads, N, N, dtype=dtype)
    before = launch_counts(emu)
    out, lse = E.window_attention(qkv, bias, None, window, shift, d ** -0.5)
    got = E.window_attention_backward(grad, qkv, bias, None, out, lse, window, shift, d ** -0.5)
    launched = launched_since(emu, before)
    assert launched["window_attention_cuda.cu:mma_forward_kernel"][0] == 1
    assert launched["window_attention_cuda.cu:mma_backward_kernel"][0] == 1
    attention = lambda q, b: reference.window_attention(q, b, window, shift, None, d ** -0.5)  # noqa: E731
    assert rel_error(out, attention(qkv.double(), bias.double())) <= TOLERANCE[dtype]
    for name, g, e in zip(("qkv", "bias"), got, grads(attention, [qkv, bias], [grad])):
        assert rel_error(g, e) <= TOLERANCE[dtype], name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("H, W, x_offset, gate_offset", [(8, 8, 0, 0), (8, 8, 1, 0), (8, 8, 0, 2), (8, 8, 4, None),
                                                        (2, 3, 0, 0), (3, 4, 0, 0), (1, 1, 0, 0)])
def test_apply_gates_copies_as_wide_as_alignment_allows(emu, dtype, H, W, x_offset, gate_offset):
    """apply_gates' forward copies up to 16 bytes at once: the most elements that divide H·W and keep x and the
    pixel gate (views `offset` elements into their storage; None: no pixel gate) aligned — one block per 256
    such chunks — and gives the reference's values whatever the width."""
    B, C, HW = 2, 64, H * W
    x, channel_gate = offset_view(x_offset, B, C, H, W, dtype=dtype), torch.rand(B, C).to(dtype)
    pixel_gate = None if gate_offset is None else offset_view(gate_offset, B, 1, H, W, dtype=dtype, fill=torch.rand)
    vec = 16 // x.element_size()
    while HW % vec or x_offset % vec or (gate_offset or 0) % vec:
        vec //= 2
    before = launch_counts(emu)
    out = E.apply_gates(x, channel_gate, pixel_gate)
    assert launched_since(emu, before)["gating_cuda.cu:apply_gates_kernel"] == (1, math.ceil(B * C * HW / vec / 256))
    expected = reference.apply_gates(x.double(), channel_gate.double(),
                                     None if pixel_gate is None else pixel_gate.double())
    assert rel_error(out, expected) <= TOLERANCE[dtype]


# ---- empty batches: no launch (the emulator refuses a grid of 0 blocks), empty results -------------------


@pytest.mark.parametrize("case", [c.param() for c in EMPTY_CASES])
def test_empty_batches(case):
    check(case.run(EMULATED, torch.float32, seed=SEED), torch.float32)


# ---- the bugs the emulator found --------------------------------------------------------------------------


def test_window_attention_minus_inf_logit_at_key_0():
    """The forward's online softmax started from max = −inf, sum = 0: a −inf logit at key 0 computed
    exp(−inf + inf) = NaN and made the whole row NaN (found by the emulator; the issue's repro)."""
    qkv = torch.randn(1, 4, 4, 3, 1, 4, dtype=torch.float64)
    m = torch.zeros(1, 16, 16, dtype=torch.float64)
    m[0, :, 0] = float("-inf")
    out, lse = E.window_attention(qkv, None, m, 4, 0, 0.5)
    assert out.isfinite().all() and lse.isfinite().all()
    assert rel_error(out, reference.window_attention(qkv, None, 4, 0, m, 0.5)) <= 1e-12
    assert rel_error(out, K.window_attention(qkv, None, m, 4, 0, 0.5)[0]) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_a_nan_maximum_gets_a_nan_gradient(dtype):
    """As torch.amax: the gradient of a NaN maximum is NaN for the whole pooled set. The tie test
    x == max is never true for NaN, so the kernels (CUDA and CPU) gave no element the max's gradient."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    x[0, 1, 2, 3] = math.nan
    x = x.to(dtype)
    gm, gmax = torch.randn(2, 3, dtype=dtype), torch.randn(2, 3, dtype=dtype)
    mean, mx = E.channel_pool(x)
    (expected,) = grads(reference.channel_pool, [x], [gm, gmax])
    got = E.channel_pool_backward(gm, gmax, x, mx)
    check([Output("channel_pool_backward", got, expected, K.channel_pool_backward(gm, gmax, x, mx))], dtype)
    assert got[0, 1].isnan().all() and not got[1].isnan().any()
    pooled = E.spatial_pool(x, None)
    g = torch.randn(2, 2, 4, 5, dtype=dtype)
    (expected,) = grads(lambda t: reference.spatial_pool(t), [x], [g])
    got = E.spatial_pool_backward(g, x, None, pooled)[0]
    check([Output("spatial_pool_backward", got, expected, K.spatial_pool_backward(g, x, None, pooled)[0])], dtype)
    assert got[0, :, 2, 3].isnan().all() and got.isnan().sum() == 3


# ---- every kernel ran ------------------------------------------------------------------------------------


def test_every_kernel_ran_in_every_dtype(emu):
    """Every CUDA kernel was launched by test_kernels, each with at least 4 distinct instantiations
    (float64, float32, float16, bfloat16), the tensor-core kernels with both of theirs (float16, bfloat16)."""
    if len(_RAN) < len(CASES) * len(DTYPES):
        pytest.skip("needs every test_kernels case to have run and passed")
    kernels = cuda_kernels()
    assert len(kernels) >= 30
    launched = emu.launches()
    missing = sorted(k for k in kernels if k not in launched)
    assert not missing, f"never launched: {missing}"
    tensor_core = tensor_core_kernels()
    assert tensor_core, "no tensor-core kernel found"
    few = sorted(k for k in kernels if len(launched[k][2]) < (2 if k in tensor_core else 4))
    assert not few, f"launched with fewer than 4 instantiations: {few}"
