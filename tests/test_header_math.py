"""The family headers' math on the CPU against the references (DESIGN.md, "Shared math").

tests/header_math_driver.cpp runs the ATTNKERN_HD functions of csrc/<family>/<family>.h — the very code
the CPU and CUDA kernels share — composed as the kernels compose them, in double precision. It is built
once for this module by the host compiler with csrc/ alone on the include path (no ATen, no torch: a
second or two), fed numbers on stdin, and its output compared with attnkern.reference, autograd through
it, or torch's own formulations (unfold, conv2d, einsum, roll) on fresh random inputs.
"""

import subprocess
from pathlib import Path
from typing import List, Sequence

import pytest
import torch
import torch.nn.functional as F

from attnkern import reference as ref
from attnkern._window_geometry import shift_regions
from test_headers import CSRC, CXX

DRIVER = Path(__file__).resolve().parent / "header_math_driver.cpp"
NAN = float("nan")

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler found")


def _text(value) -> str:
    if isinstance(value, torch.Tensor):
        return " ".join(repr(float(v)) for v in value.detach().double().flatten().tolist())
    return repr(float(value))


class Driver:
    def __init__(self, executable: Path):
        self.executable = executable

    def __call__(self, command: str, *inputs, shapes: Sequence[Sequence[int]]) -> List[torch.Tensor]:
        """Runs `command` on the numbers of `inputs` (numbers and tensors, flattened in order); returns its
        output cut into tensors of `shapes`."""
        result = subprocess.run([str(self.executable), command], input=" ".join(_text(v) for v in inputs),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        values = torch.tensor([float(v) for v in result.stdout.split()], dtype=torch.float64)
        sizes = [int(torch.Size(shape).numel()) for shape in shapes]
        assert values.numel() == sum(sizes), f"{command}: {values.numel()} numbers, expected {sum(sizes)}"
        return [part.view(tuple(shape)) for part, shape in zip(values.split(sizes), shapes)]


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Driver:
    executable = tmp_path_factory.mktemp("header_math") / "driver"
    result = subprocess.run([CXX, "-std=c++17", "-O1", "-Wall", "-I", str(CSRC), str(DRIVER), "-o", str(executable)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return Driver(executable)


def close(actual: torch.Tensor, expected: torch.Tensor, **kwargs):
    torch.testing.assert_close(actual, expected.double(), rtol=1e-10, atol=1e-12, **kwargs)


def randn(*shape) -> torch.Tensor:
    """Fresh random numbers (conftest seeds each test: ATTNKERN_TEST_SEED=N repeats a run)."""
    return torch.randn(*shape, dtype=torch.float64)


# ---- window_attention ----------------------------------------------------------------------------


@pytest.mark.parametrize("H,W,window,shift", [(8, 8, 4, 0), (8, 12, 4, 2), (6, 9, 3, 1), (12, 8, 4, 3), (4, 4, 2, 1)])
def test_window_grid_is_roll_and_partition(driver, H, W, window, shift):
    nW, N = (H // window) * (W // window), window * window
    pixel, region = driver("window_grid", H, W, window, shift, shapes=[(nW, N, 2)])[0].long().unbind(-1)
    # The pixel of each token: the image of pixel numbers, rolled by −shift and cut into windows.
    image = torch.arange(H * W).view(1, H, W, 1)
    if shift:
        image = torch.roll(image, shifts=(-shift, -shift), dims=(1, 2))
    assert torch.equal(pixel, ref.window_partition(image, window).view(nW, N))
    if shift:
        # SwinIR's regions: tokens of different regions mask each other (calculate_mask), and the labels
        # are those of its slices.
        different = region[:, :, None] != region[:, None, :]
        assert torch.equal(different, ref.shift_region_mask(H, W, window, shift) != 0)
        labels = shift_regions(H, window, shift)[:, None] * 3 + shift_regions(W, window, shift)[None, :]
        assert torch.equal(region, ref.window_partition(labels.view(1, H, W, 1), window).view(nW, N))


WINDOW_CASES = [  # B, H, W, heads, d, window, shift, bias, mask
    (1, 4, 4, 1, 3, 2, 0, True, False),
    (2, 6, 9, 2, 4, 3, 1, True, True),
    (1, 8, 8, 2, 2, 4, 2, False, True),
    (1, 8, 4, 1, 5, 4, 3, True, False),
    (1, 4, 6, 3, 2, 2, 0, False, False),
]


@pytest.mark.parametrize("B,H,W,heads,d,window,shift,has_bias,has_mask", WINDOW_CASES)
def test_window_attention_logits_and_gradients(driver, B, H, W, heads, d, window, shift, has_bias, has_mask):
    nW, N, scale = (H // window) * (W // window), window * window, 0.7
    qkv = randn(B, H, W, 3, heads, d).requires_grad_()
    bias = randn(heads, N, N).requires_grad_() if has_bias else None
    mask = randn(nW, N, N) if has_mask else None
    grad = randn(B, H, W, heads, d)
    inputs = [qkv] + ([bias] if has_bias else []) + ([mask] if has_mask else []) + [grad]
    logits, out, grad_qkv, grad_bias = driver(
        "window_attention", B, H, W, heads, d, window, shift, scale, int(has_bias), int(has_mask), *inputs,
        shapes=[(B, nW, heads, N, N), (B, H, W, heads, d), (B, H, W, 3, heads, d), (heads, N, N) if has_bias else (0,)])

    # The logits as the reference composes them: roll, partition, scale·q·kᵀ + bias + region mask + mask.
    with torch.no_grad():
        x = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2)) if shift else qkv
        q, k, _ = ref.window_partition(x, window).permute(2, 0, 3, 1, 4).unbind(0)  # [B·nW, heads, N, d]
        expected = ((q * scale) @ k.transpose(-2, -1)).view(B, nW, heads, N, N)
        if has_bias:
            expected = expected + bias
        if shift:
            expected = expected + ref.shift_region_mask(H, W, window, shift, dtype=torch.float64)[None, :, None]
        if has_mask:
            expected = expected + mask[None, :, None]
    close(logits, expected)

    reference = ref.window_attention(qkv, bias, window, shift, mask, scale)
    close(out, reference)
    reference.backward(grad)
    close(grad_qkv, qkv.grad)
    if has_bias:
        close(grad_bias, bias.grad)


# ---- covpool: the Newton–Schulz steps over the plain-loop pointer policy ----------------------------


def matrix(n: int, symmetric: bool) -> torch.Tensor:
    """A covariance matrix (symmetric positive definite), as SOCA feeds the square root; or one made
    non-symmetric (the op takes any square matrix), so that a missing transpose shows."""
    x = randn(n, 3 * n)
    a = ref.covpool(x[None])[0] + 0.1 * torch.eye(n, dtype=torch.float64)
    return a if symmetric else a + 0.2 * randn(n, n) * a.diagonal().mean()


def iterate(a: torch.Tensor, steps: int):
    """Y_k, Z_k after `steps` steps from the normalised a (the reference's iteration; they commute)."""
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    y, z = a / a.trace(), eye
    for _ in range(steps):
        t = 1.5 * eye - 0.5 * z @ y
        y, z = y @ t, t @ z
    return y, z


def step(y, z):
    t = 1.5 * torch.eye(y.shape[0], dtype=y.dtype) - 0.5 * z @ y
    return t, y @ t, t @ z


def final(y, z):
    return y @ (1.5 * torch.eye(y.shape[0], dtype=y.dtype) - 0.5 * z @ y)


@pytest.mark.parametrize("n,ld", [(1, 1), (6, 7), (17, 17), (64, 65), (70, 71), (130, 130)])
def test_products_on_padded_rows_in_every_orientation(driver, n, ld):
    """SquareProducts (the one-block kernels' products: 4×4 cells of 64×64 tiles, here on one thread) on rows
    ld apart, operands transposed or not, an added matrix, the output over it, the identity: n from one
    ragged cell to several ragged tiles."""
    a, b, c = randn(n, n), randn(n, n), randn(n, n)
    results = driver("ns_products", n, ld, a, b, c, shapes=[(n, n)] * 12)
    eye = torch.eye(n, dtype=torch.float64)
    orientations = [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (ta, tb), (plus, accumulated, with_identity) in zip(orientations, zip(*[iter(results)] * 3)):
        ab = (a.t() if ta else a) @ (b.t() if tb else b)
        close(plus, 2 * ab - c)
        close(accumulated, c + ab)
        close(with_identity, 0.5 * ab + 3 * eye)


@pytest.mark.parametrize("n", [1, 4, 7])
def test_newton_schulz_step(driver, n):
    y, z = randn(n, n), randn(n, n)  # any matrices: the step is exact for all
    t, y_next, z_next = driver("ns_step", n, y, z, shapes=[(n, n)] * 3)
    for actual, expected in zip((t, y_next, z_next), step(y, z)):
        close(actual, expected)


@pytest.mark.parametrize("n", [1, 4, 7])
def test_newton_schulz_final(driver, n):
    y, z = randn(n, n), randn(n, n)
    zy, p = driver("ns_final", n, y, z, shapes=[(n, n)] * 2)
    close(zy, z @ y)
    close(p, final(y, z))


@pytest.mark.parametrize("n", [1, 4, 7, 67])
def test_newton_schulz_step_backward_is_autograd(driver, n):
    y, z = randn(n, n).requires_grad_(), randn(n, n).requires_grad_()
    gy_next, gz_next = randn(n, n), randn(n, n)
    t, y_next, z_next = step(y, z)
    t.retain_grad()
    torch.autograd.backward([y_next, z_next], [gy_next, gz_next])
    gt, gy, gz = driver("ns_step_backward", n, y, z, t, gy_next, gz_next, shapes=[(n, n)] * 3)
    close(gt, t.grad)
    close(gy, y.grad)
    close(gz, z.grad)


@pytest.mark.parametrize("n,steps,symmetric", [(1, 0, True), (4, 0, False), (5, 2, True), (5, 2, False), (7, 4, False)])
def test_newton_schulz_final_backward_is_autograd(driver, n, steps, symmetric):
    # The final step's gradient uses Z·Y = Y·Z, true of the iterates (both are polynomials in A).
    y, z = (m.requires_grad_() for m in iterate(matrix(n, symmetric), steps))
    gp = randn(n, n)
    final(y, z).backward(gp)
    gy, gz = driver("ns_final_backward", n, y, z, gp, shapes=[(n, n)] * 2)
    close(gy, y.grad)
    close(gz, z.grad)


@pytest.mark.parametrize("n,iters,symmetric", [(1, 1, True), (3, 1, False), (3, 2, True), (6, 5, True), (6, 5, False),
                                               (9, 8, False)])
def test_sqrtm_and_its_gradient_match_the_reference(driver, n, iters, symmetric):
    a = matrix(n, symmetric).requires_grad_()
    grad = randn(n, n)
    out, grad_a = driver("sqrtm", n, iters, a, grad, shapes=[(n, n)] * 2)
    expected = ref.sqrtm_newton_schulz(a[None], iters)[0]
    close(out, expected)
    expected.backward(grad)
    close(grad_a, a.grad)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_triu_index_is_the_triuvec_order(driver, n):
    """Walking the rows j ≤ i, triu_index counts 0, 1, 2, … and the entries come in triuvec's order."""
    rows, cols, index = driver("triu", n, shapes=[(n * (n + 1) // 2, 3)])[0].long().unbind(-1)
    entries = torch.arange(n * n).view(1, n, n)  # entry (i, j) holds i·n + j
    assert torch.equal(rows * n + cols, ref.triuvec(entries)[0])
    assert torch.equal(index, torch.arange(n * (n + 1) // 2))


# ---- region_conv ---------------------------------------------------------------------------------


def out_size(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@pytest.mark.parametrize("stride,pad,dilation,size,kernel", [
    (1, 0, 1, 5, 3), (2, 1, 1, 7, 3), (2, 2, 2, 9, 3), (3, 0, 2, 10, 2), (1, 3, 1, 4, 5), (3, 1, 1, 8, 1)])
def test_taps_are_unfold(driver, stride, pad, dilation, size, kernel):
    out = out_size(size, kernel, stride, pad, dilation)
    input_of, output_of = driver("taps", stride, pad, dilation, size, out, kernel,
                                 shapes=[(out, kernel), (size, kernel)])
    # Unfold a column of the numbers 1..size: tap u of output o reads the number there (0: padding).
    column = torch.arange(1, size + 1, dtype=torch.float64).view(1, 1, size, 1)
    read = F.unfold(column, (kernel, 1), dilation=(dilation, 1), padding=(pad, 0), stride=(stride, 1))[0]  # [kernel, out]
    assert torch.equal(input_of, read.t() - 1)
    expected = torch.full((size, kernel), -1.0, dtype=torch.float64)
    for tap in range(kernel):
        for o in range(out):
            if read[tap, o] > 0:
                expected[int(read[tap, o]) - 1, tap] = o
    assert torch.equal(output_of, expected)


CONV_CASES = [  # Cin, H, W, Cout, kh, kw, stride, pad, dilation
    (2, 5, 6, 3, 3, 2, (1, 2), (1, 0), (1, 2)),
    (1, 7, 4, 2, 3, 3, (2, 1), (1, 1), (1, 1)),
    (3, 6, 6, 1, 1, 1, (1, 1), (0, 0), (1, 1)),
    (2, 9, 8, 2, 3, 3, (3, 2), (2, 3), (2, 1)),
]


@pytest.mark.parametrize("Cin,H,W,Cout,kh,kw,stride,pad,dilation", CONV_CASES)
def test_tap_walk_and_im2col_are_unfold_and_conv2d(driver, Cin, H, W, Cout, kh, kw, stride, pad, dilation):
    Ho, Wo = (out_size(s, k, st, p, d) for s, k, st, p, d in zip((H, W), (kh, kw), stride, pad, dilation))
    x, filters = randn(Cin, H, W), randn(Cout, Cin, kh, kw)
    K = Cin * kh * kw
    sources, out = driver("conv", Cin, H, W, Cout, kh, kw, Ho, Wo, *stride, *pad, *dilation, x, filters,
                          shapes=[(Ho * Wo, K), (Cout, Ho, Wo)])
    numbers = torch.arange(1, Cin * H * W + 1, dtype=torch.float64).view(1, Cin, H, W)  # offset + 1; padding 0
    read = F.unfold(numbers, (kh, kw), dilation=dilation, padding=pad, stride=stride)[0]  # [K, H'·W']
    assert torch.equal(sources, read.t() - 1)
    close(out, F.conv2d(x[None], filters, stride=stride, padding=pad, dilation=dilation)[0])


def test_region_selection_and_guide_gradient_match_the_reference(driver):
    R, C, P = 4, 3, 6
    guide, outputs, grad = randn(R, P), randn(R, C, P), randn(C, P)
    guide[2, 1] = guide[0, 1] = guide[:, 1].max() + 1  # a tie: the first maximum is selected
    guide.requires_grad_()
    outputs.requires_grad_()
    selected, guide_grad, grad_outputs = driver("region_assign", R, C, P, guide, grad, outputs,
                                                shapes=[(P,), (R, P), (R, C, P)])
    out = ref.region_assign(outputs.view(1, R, C, 1, P), guide.view(1, R, 1, P))
    assert torch.equal(selected.long(), guide.argmax(dim=0))
    out.backward(grad.view(1, C, 1, P))
    close(guide_grad, guide.grad)
    assert torch.equal(grad_outputs, outputs.grad.view(R, C, P))


def test_region_selection_counts_nan_as_the_maximum(driver):
    guide = torch.tensor([[1.0, NAN, 2.0, NAN], [3.0, 0.0, NAN, 1.0], [NAN, 5.0, 1.0, NAN]])  # the first NaN wins
    R, P = guide.shape
    selected = driver("region_assign", R, 1, P, guide, torch.zeros(P), torch.zeros(R, P),
                      shapes=[(P,), (R, P), (R, 1, P)])[0]
    assert torch.equal(selected.long(), guide.argmax(dim=0))


# ---- criss_cross ---------------------------------------------------------------------------------


@pytest.mark.parametrize("C,H,W", [(3, 4, 5), (2, 1, 6), (1, 5, 1), (4, 3, 3)])
def test_criss_cross_entries(driver, C, H, W):
    P = H + W - 1
    q, k, v, grad = (randn(C, H, W) for _ in range(4))
    attn = randn(P, H, W)
    energy, out, adjoint = driver("criss_cross", C, H, W, q, k, v, grad, attn, shapes=[(P, H, W), (C, H, W), (C, H, W)])
    # The affinity as two einsums: the whole row, then the column without the pixel itself.
    row = torch.einsum("chw,chx->xhw", q, k)
    column = torch.einsum("chw,cyw->yhw", q, k)
    others = torch.tensor([[y for y in range(H) if y != h] for h in range(H)], dtype=torch.long).t()  # [H − 1, H]
    column = column.gather(0, others[:, :, None].expand(H - 1, H, W))
    close(energy, torch.cat([row, column]))
    close(energy, ref.criss_cross_affinity(q[None], k[None])[0])
    close(out, ref.criss_cross_aggregate(attn[None], v[None])[0])
    close(adjoint, ref.criss_cross_aggregate_transposed(attn[None], grad[None])[0])
    # aggregate_transposed is the adjoint of aggregate: ⟨aggregate(a, v), g⟩ = ⟨v, aggregate_transposed(a, g)⟩.
    close((out * grad).sum(), (v * adjoint).sum())


def test_criss_cross_softmax_weights_and_gradient(driver):
    energy = (3 * randn(9)).requires_grad_()
    grad_weight = randn(9)
    weight, energy_grad = driver("criss_cross_softmax", 9, energy, grad_weight, shapes=[(9,), (9,)])
    expected = energy.softmax(0)
    close(weight, expected)
    expected.backward(grad_weight)
    close(energy_grad, energy.grad)


# ---- gating --------------------------------------------------------------------------------------


@pytest.mark.parametrize("x,grad_mean,grad_max", [
    ([0.5, -1.0, 2.0, 0.25], 0.7, -1.3),
    ([2.0, -1.0, 2.0, 0.25, 2.0], 0.7, 0.9),    # three tied maxima share the max's gradient
    ([1.0, NAN, 3.0], 0.4, 1.1),                 # a NaN maximum: every element's gradient is NaN
    ([1.0, NAN, 3.0], 0.4, 0.0),                 # ... unless no gradient reaches the maximum (below)
    ([-4.0], -2.0, 3.0),
])
def test_pool_gradient_is_autograd_of_mean_and_amax(driver, x, grad_mean, grad_max):
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    n = x.numel()
    maximum, grad_x = driver("pool", n, x, grad_mean, grad_max, shapes=[(), (n,)])
    torch.testing.assert_close(maximum, x.amax(), equal_nan=True)
    # A zero gradient of the maximum is what the kernels get for a maximum left unused: it changes nothing
    # (gating.h's max_share), as autograd of the mean alone.
    outputs = [x.mean(), x.amax()] if grad_max != 0 else [x.mean()]
    grads = [torch.tensor(v, dtype=torch.float64) for v in (grad_mean, grad_max)][:len(outputs)]
    expected = torch.autograd.grad(outputs, [x], grads)[0]
    close(grad_x, expected, equal_nan=True)
