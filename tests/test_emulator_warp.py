"""The emulated device's warp collectives (csrc/emulation, csrc/common/warp_mma.cuh), through the kernels of
tests/emulation/warp_checks.cu: __shfl_xor_sync and __shfl_sync with widths, mma.sync.m16n8k16 in fp16 and
bf16 against a float64 matrix product, ldmatrix .x1/.x2/.x4 with and without .trans against the PTX ISA's
fragment layout, and the errors of collectives that not every lane of a warp reaches — on both schedulers.
The window-attention tensor-core kernel (tests/test_cuda_emulated.py) runs them end to end."""

import pytest
import torch

from conftest import EMULATED_SCHEDULERS

W = torch.ops.attnkern_warp_tests


@pytest.fixture(params=EMULATED_SCHEDULERS)
def scheduler(request, emu):
    with emu.settings(scheduler=request.param, order="shuffled", seed=3):
        yield request.param


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
@pytest.mark.parametrize("lane_mask,width", [(1, 32), (2, 32), (16, 32), (31, 32), (3, 4), (4, 8), (8, 8)])
def test_shfl_xor_sync(scheduler, dtype, lane_mask, width):
    x = torch.randint(-1000, 1000, (3, 64)).to(dtype)
    lane = torch.arange(64) % 32
    source = lane ^ lane_mask
    # CUDA: a lane may read earlier segments of `width` lanes; reading a later one gives its own value
    source = torch.where(source // width > lane // width, lane, source)
    expected = x[:, (torch.arange(64) // 32) * 32 + source]
    assert torch.equal(W.shuffle(x, lane_mask, width, True), expected)


@pytest.mark.parametrize("source_lane,width", [(0, 32), (7, 32), (3, 8), (13, 4)])
def test_shfl_sync(scheduler, source_lane, width):
    x = torch.randn(2, 96)
    lane = torch.arange(96) % 32
    source = (lane // width) * width + source_lane % width
    assert torch.equal(W.shuffle(x, source_lane, width, False), x[:, (torch.arange(96) // 32) * 32 + source])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mma_m16n8k16_is_a_matrix_product_with_float_accumulation(scheduler, dtype):
    a, b, c = torch.randn(16, 16).to(dtype), torch.randn(16, 8).to(dtype), torch.randn(16, 8)
    d = W.mma(a, b, c)
    expected = (a.double() @ b.double() + c.double()).float()  # products of 16-bit values are exact in float
    torch.testing.assert_close(d, expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("transpose", [False, True])
def test_ldmatrix_gives_each_lane_its_fragment(scheduler, count, transpose):
    x = torch.randint(-30000, 30000, (8 * count, 8), dtype=torch.int16)
    out = W.ldmatrix(x, count, transpose)
    lane = torch.arange(32).view(32, 1, 1)
    m = torch.arange(count).view(1, count, 1)
    e = torch.arange(2).view(1, 1, 2)
    if transpose:  # rows 2(lane % 4) + e of column lane / 4
        expected = x[8 * m + 2 * (lane % 4) + e, lane // 4]
    else:  # row lane / 4, columns 2(lane % 4) + e
        expected = x[8 * m + lane // 4, 2 * (lane % 4) + e]
    assert torch.equal(out, expected)


@pytest.mark.parametrize("how,threads,message", [
    (0, 64, "lanes of warp 0 wait in a warp collective"),  # a lane returned
    (1, 64, "lanes of warp 0 wait in a warp collective"),  # a lane waits at __syncthreads
    (2, 32, "full-warp collectives only"),
    (3, 48, "warp 1, which has fewer than 32 threads"),
])
def test_collectives_that_not_every_lane_reaches_are_errors(scheduler, how, threads, message):
    with pytest.raises(RuntimeError, match=message):
        W.broken_collective(how, threads)
    W.broken_collective(3, 64)  # and the device runs on: __syncwarp in full warps is fine
