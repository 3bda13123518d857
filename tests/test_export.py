"""Export and deployment (attnkern.export): ONNX with standard operators only, run in ONNX Runtime;
TorchScript and torch.export programs with the kernels and without attnkern (portable).

Every layer of attnkern.nn and SwinIR is exported by both ONNX exporters (TorchScript-based,
``dynamo=False``, and ``torch.export``-based, ``dynamo=True``) with a dynamic batch, height and width, and
run in ONNX Runtime at the example shape and at another one; the outputs must equal the PyTorch
layer's, run on attnkern's kernels, to 1e-4 relative (float32). Exported files that must run without
attnkern are loaded in a fresh interpreter that never imports it.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnkern
from attnkern import export, ops
from attnkern import nn as ak
from attnkern.models import SwinIR
from conftest import rel_error

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ONNX_TOLERANCE = 1e-4
STANDARD_DOMAINS = {"", "ai.onnx"}


def randomise(module: nn.Module) -> nn.Module:
    """Moves every parameter and batch-norm statistic away from its initial value (gamma = 0, SGE's
    zero weights, unit batch norms would hide parts of a layer), in eval mode."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return module.eval()


class TokensAsImage(nn.Module):
    """A Swin layer that takes tokens and (H, W) run on an image [B, C, H, W]: the sizes come from the
    input, so they stay dynamic in the exported graph."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        B, C, H, W = x.shape
        tokens = self.layer(x.flatten(2).transpose(1, 2), (H, W))
        return tokens.transpose(1, 2).reshape(B, C, H, W)


class Windows(nn.Module):
    """WindowAttention's windowed interface on [B_, C, ws, ws] windows (optionally with a mask)."""

    def __init__(self, layer: nn.Module, mask=None):
        super().__init__()
        self.layer = layer
        self.register_buffer("mask", mask)

    def forward(self, x):
        B_, C, ws, _ = x.shape
        out = self.layer(x.flatten(2).transpose(1, 2), self.mask)
        return out.transpose(1, 2).reshape(B_, C, ws, ws)


# name → (factory, input shape at export, another input shape, smallest dynamic H/W for torch.export)
LAYERS = {
    "SOCA": (lambda: ak.SOCA(32, reduction=4), (2, 32, 13, 11), (3, 32, 17, 20), 2),
    "CrissCrossAttention": (lambda: ak.CrissCrossAttention(32, recurrence=2), (2, 32, 13, 11), (1, 32, 9, 21), 2),
    "DRConv2d": (lambda: ak.DRConv2d(16, 24, 3, region_num=4, padding=1), (2, 16, 13, 11), (3, 16, 20, 7), 3),
    "DRConv2d-stride2": (lambda: ak.DRConv2d(16, 8, 3, region_num=3, stride=2, padding=1, dilation=1),
                         (2, 16, 14, 11), (1, 16, 9, 16), 3),
    "SEAttention": (lambda: ak.SEAttention(32, reduction=4), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    "CBAM": (lambda: ak.CBAM(32, ratio=4, kernel_size=7), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    "ChannelAttention": (lambda: ak.ChannelAttention(32, ratio=4), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    "SpatialAttention": (lambda: ak.SpatialAttention(3), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    "DoubleAttention": (lambda: ak.DoubleAttention(32, 16, 8), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    "SKConv": (lambda: ak.SKConv(32, M=2, G=8), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    "SGE": (lambda: ak.SGE(groups=8), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    "cSE": (lambda: ak.cSE(32), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    "sSE": (lambda: ak.sSE(32), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    "scSE": (lambda: ak.scSE(32), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    "SCConv": (lambda: ak.SCConv(32, 32), (2, 32, 13, 11), (3, 32, 8, 20), 4),
    "SplitAttn": (lambda: ak.SplitAttn(32, radix=2), (2, 32, 13, 11), (3, 32, 5, 20), 2),
    # Swin layers on images; H, W not multiples of the window: the blocks pad and crop
    "SwinTransformerBlock": (lambda: TokensAsImage(ak.SwinTransformerBlock(16, (8, 8), 2, window_size=4, shift_size=2)),
                             (2, 16, 13, 11), (3, 16, 9, 20), 5),
    # RSTB: a BasicLayer of a W-MSA and an SW-MSA block, then a convolution
    "RSTB": (lambda: TokensAsImage(ak.RSTB(16, (8, 8), 2, 2, 4, img_size=8, patch_size=1, resi_connection="3conv")),
             (2, 16, 13, 11), (3, 16, 9, 20), 5),
    "WindowAttention": (lambda: Windows(ak.WindowAttention(16, 4, 2)), (6, 16, 4, 4), (3, 16, 4, 4), None),
}

# SwinIR with each of its reconstruction heads (window 4, two RSTBs)
SWINIR = {
    "pixelshuffledirect": dict(upscale=2, upsampler="pixelshuffledirect"),
    "pixelshuffle": dict(upscale=3, upsampler="pixelshuffle"),
    "nearest+conv": dict(upscale=4, upsampler="nearest+conv"),
    "denoise": dict(upscale=1, upsampler="", in_chans=1, img_range=255.0),
}


def small_swinir(**kwargs):
    config = dict(img_size=16, window_size=4, embed_dim=12, depths=[2, 2], num_heads=[2, 2], mlp_ratio=2)
    return SwinIR(**{**config, **kwargs})


def dims(min_hw):
    """dynamic_shapes for one [B, C, H, W] input (H, W fixed when min_hw is None)."""
    Dim = torch.export.Dim
    if min_hw is None:
        return ({0: Dim("batch", min=1, max=1024)},)
    return ({0: Dim("batch", min=1, max=1024), 2: Dim("height", min=min_hw, max=4096),
             3: Dim("width", min=min_hw, max=4096)},)


def export_onnx(module, x, path, dynamo, min_hw=2):
    if dynamo:
        torch.onnx.export(module, (x,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                          dynamic_shapes=dims(min_hw), verbose=False)
    else:
        axes = {0: "batch"} if min_hw is None else {0: "batch", 2: "height", 3: "width"}
        torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes})
    return path


def check_standard_onnx(path):
    """Only standard ONNX operators; nothing that names attnkern."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    domains = {n.domain for n in nodes}
    assert domains <= STANDARD_DOMAINS, f"non-standard operator domains {domains - STANDARD_DOMAINS}"
    assert not any("attnkern" in n.op_type.lower() or "attnkern" in n.domain for n in nodes)
    return model


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def assert_runs_like_pytorch(module, path, *inputs):
    for x in inputs:
        with torch.no_grad():
            want = module(x)
        got = run_onnx(path, x)
        assert got.shape == want.shape, f"input {tuple(x.shape)}: ONNX {tuple(got.shape)} vs PyTorch {tuple(want.shape)}"
        assert rel_error(got, want) <= ONNX_TOLERANCE, f"input {tuple(x.shape)}: rel error {rel_error(got, want):.2e}"


# ---- ONNX: every layer, both exporters ------------------------------------------------------------

@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_onnx(name, dynamo, tmp_path):
    factory, shape, other, min_hw = LAYERS[name]
    module = randomise(factory())
    x, y = torch.randn(shape), torch.randn(other)
    path = export_onnx(module, x, tmp_path / f"{name}.onnx", dynamo, min_hw)
    check_standard_onnx(path)
    assert_runs_like_pytorch(module, path, x, y)


def test_window_attention_with_mask_onnx(tmp_path):
    """The windowed interface with an additive mask (windows of two images of 2×2 windows)."""
    mask = torch.zeros(4, 16, 16).masked_fill(torch.rand(4, 16, 16) < 0.3, -100.0)
    module = randomise(Windows(ak.WindowAttention(16, 4, 2), mask))
    x = torch.randn(8, 16, 4, 4)
    path = export_onnx(module, x, tmp_path / "wa.onnx", dynamo=False, min_hw=None)
    check_standard_onnx(path)
    assert_runs_like_pytorch(module, path, x, torch.randn(12, 16, 4, 4))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_swinir_onnx(dynamo, tmp_path):
    """SwinIR (lightweight-SR head) with a dynamic batch, height and width: sides that are and are not
    multiples of the window (the model reflect-pads and crops inside the graph)."""
    model = randomise(small_swinir(**SWINIR["pixelshuffledirect"]))
    x = torch.rand(2, 3, 13, 18)
    path = export_onnx(model, x, tmp_path / "swinir.onnx", dynamo, min_hw=5)
    check_standard_onnx(path)
    assert_runs_like_pytorch(model, path, x, torch.rand(1, 3, 16, 9), torch.rand(3, 3, 24, 20))


@pytest.mark.parametrize("head", ["pixelshuffle", "nearest+conv", "denoise"])
def test_swinir_heads_onnx(head, tmp_path):
    config = SWINIR[head]
    model = randomise(small_swinir(**config))
    c = config.get("in_chans", 3)
    x = torch.rand(1, c, 11, 14)
    path = export_onnx(model, x, tmp_path / "swinir.onnx", dynamo=False)
    check_standard_onnx(path)
    assert_runs_like_pytorch(model, path, x, torch.rand(2, c, 8, 17))


def test_onnx_export_leaves_the_kernels_on(tmp_path):
    """Portable mode lasts as long as the export: afterwards the layers run the kernels again."""
    assert not export.is_portable()
    torch.onnx.export(ak.SOCA(16).eval(), (torch.randn(1, 16, 5, 5),), str(tmp_path / "soca.onnx"), dynamo=False)
    assert not export.is_portable()
    assert ops._kernels.use_kernel(torch.zeros(1))


# ---- the portable formulations against the kernels (eager) ----------------------------------------

@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 3), (7, 5), (13, 20), (64, 3)])
def test_adaptive_avg_pool2d(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for out in [(3, 3), (1, 2), 4]:
        assert rel_error(export.adaptive_avg_pool2d(x, out), F.adaptive_avg_pool2d(x, out)) <= 1e-12


@pytest.mark.parametrize("H, W", [(1, 1), (1, 6), (5, 1), (6, 9)])
def test_criss_cross_formulation(H, W):
    q, k = torch.randn(2, 4, H, W, dtype=torch.float64), torch.randn(2, 4, H, W, dtype=torch.float64)
    v = torch.randn(2, 5, H, W, dtype=torch.float64)
    assert rel_error(export.criss_cross_attention(q, k, v), ops.criss_cross_attention(q, k, v)) <= 1e-12


@pytest.mark.parametrize("stride, padding, dilation, k", [(1, 1, 1, 3), (2, 0, 1, 3), (1, 2, 2, 3), ((2, 1), (1, 0), 1, 1)])
def test_region_conv_formulation(stride, padding, dilation, k):
    x = torch.randn(2, 5, 11, 9, dtype=torch.float64, requires_grad=True)
    filters = torch.randn(2, 3, 4, 5, k, k, dtype=torch.float64, requires_grad=True)
    out_size = [(s + 2 * p - (dilation if isinstance(dilation, int) else dilation[i]) * (k - 1) - 1)
                // (stride if isinstance(stride, int) else stride[i]) + 1
                for i, (s, p) in enumerate(zip((11, 9), (padding, padding) if isinstance(padding, int) else padding))]
    guide = torch.randn(2, 3, *out_size, dtype=torch.float64, requires_grad=True)
    args = (stride, padding, dilation)
    want = ops.dynamic_region_conv(x, filters, guide, *args)
    got = export.dynamic_region_conv(x, filters, guide, *args)
    assert rel_error(got, want) <= 1e-12
    grad = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (x, filters, guide), grad), torch.autograd.grad(want, (x, filters, guide), grad)):
        assert rel_error(a, b) <= 1e-10


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_formulation(shift):
    qkv = torch.randn(2, 8, 12, 3, 2, 5, dtype=torch.float64)
    bias = torch.randn(2, 16, 16, dtype=torch.float64)
    assert rel_error(export.window_attention(qkv, bias, 4, shift, 0.3), ops.window_attention(qkv, bias, 4, shift, None, 0.3)) <= 1e-12


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_soca_crop_follows_the_size(dynamo, tmp_path):
    """SOCA crops sides over 1000 pixels to their central 1000: a file exported at 13×11 crops a 3×1003
    and a 1001×2 input as the layer does."""
    layer = randomise(ak.SOCA(8, reduction=2))
    path = export_onnx(layer, torch.randn(2, 8, 13, 11), tmp_path / "soca.onnx", dynamo)
    assert_runs_like_pytorch(layer, path, torch.randn(1, 8, 3, 1003), torch.randn(2, 8, 1001, 2))
    for shape in [(1, 8, 3, 1003), (2, 8, 1001, 2), (1, 8, 5, 5)]:
        x = torch.randn(shape)
        assert torch.equal(export.center_crop(x, 1000), ak.covpool.center_crop(x, 1000))


def test_portable_mode_switch(monkeypatch):
    x = torch.randn(1, 16, 6, 6)
    assert not export.is_portable()
    with export.portable():
        assert export.is_portable() and not ops._kernels.use_kernel(x)
        with export.portable(False):
            assert not export.is_portable() and ops._kernels.use_kernel(x)  # the innermost block decides
        assert export.is_portable()
    assert not export.is_portable()
    monkeypatch.setattr(export, "_ENV_PORTABLE", True)
    assert export.is_portable()
    with export.portable(False):
        assert not export.is_portable() and ops._kernels.use_kernel(x)


def test_environment_variable():
    """ATTNKERN_PORTABLE=1 (read at import) turns portable mode on; this process runs without it."""
    code = "import attnkern; print(attnkern.export.is_portable())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ATTNKERN_PORTABLE": "1", "PYTHONPATH": _pythonpath()},
                         cwd=str(Path(attnkern.__file__).parents[2]))
    assert out.stdout.strip() == "True" and not export._ENV_PORTABLE


# ---- TorchScript and torch.export: with the kernels, and without attnkern --------------------------

def _pythonpath():
    here = str(Path(attnkern.__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)


def run_elsewhere(code: str, *args, cwd: Path, without_attnkern: bool = False):
    """Runs code in a fresh interpreter in cwd. attnkern is importable (this one's), but imported only
    if the code does; ``without_attnkern`` makes any import of it fail."""
    if without_attnkern:
        code = "import sys\nsys.modules['attnkern'] = None  # any import of attnkern fails\n" + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=str(cwd))


LOADER = """
import sys
import torch
{imports}
kind, path, inputs, outputs = sys.argv[1:5]
program = torch.jit.load(path) if kind == "torchscript" else torch.export.load(path).module()
xs, ys = torch.load(inputs), torch.load(outputs)
for x, y in zip(xs, ys):
    with torch.no_grad():
        out = program(x)
    err = ((out - y).norm() / y.norm()).item()
    assert out.shape == y.shape and err <= 1e-5, (tuple(out.shape), tuple(y.shape), err)
print("attnkern imported:", sys.modules.get("attnkern") is not None)
"""


def save_io(module, xs, tmp_path):
    with torch.no_grad():
        ys = [module(x) for x in xs]
    torch.save(xs, tmp_path / "inputs.pt")
    torch.save(ys, tmp_path / "outputs.pt")
    return tmp_path / "inputs.pt", tmp_path / "outputs.pt"


def model_and_inputs():
    """A model with every kernel family: SOCA, criss-cross, DRConv, CBAM and a SwinIR block."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        ak.SOCA(16, reduction=4),
        ak.CrissCrossAttention(16),
        ak.DRConv2d(16, 16, 3, region_num=4, padding=1),
        ak.CBAM(16, ratio=4),
        TokensAsImage(ak.SwinTransformerBlock(16, (8, 8), 2, window_size=4, shift_size=2)),
    )
    return randomise(model), [torch.randn(2, 3, 13, 11), torch.randn(1, 3, 9, 16)]


def test_torchscript_with_kernels_and_portable(tmp_path):
    model, xs = model_and_inputs()
    inputs, outputs = save_io(model, xs, tmp_path)
    # with the kernels: attnkern ops in the file; runs where attnkern is imported first
    kernels = torch.jit.trace(model, xs[0], check_trace=False)
    assert "attnkern::" in str(kernels.inlined_graph)
    kernels.save(str(tmp_path / "kernels.torchscript"))
    args = ("torchscript", tmp_path / "kernels.torchscript", inputs, outputs)
    out = run_elsewhere(LOADER.format(imports=""), *args, cwd=tmp_path)
    assert out.returncode != 0 and "attnkern::" in out.stderr, out.stderr[-3000:]
    out = run_elsewhere(LOADER.format(imports="import attnkern"), *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # portable: standard ops only; runs without attnkern, at another size too
    with export.portable():
        traced = torch.jit.trace(model, xs[0], check_trace=False)
    assert "attnkern::" not in str(traced.inlined_graph)
    traced.save(str(tmp_path / "portable.torchscript"))
    out = run_elsewhere(LOADER.format(imports=""), "torchscript", tmp_path / "portable.torchscript", inputs, outputs,
                        cwd=tmp_path, without_attnkern=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "attnkern imported: False" in out.stdout


def _exported(model, x, min_hw, portable):
    with export.portable(portable):
        return torch.export.export(model, (x,), dynamic_shapes=dims(min_hw))


def test_torch_export_with_kernels_and_portable(tmp_path):
    model, xs = model_and_inputs()
    inputs, outputs = save_io(model, xs, tmp_path)
    with_kernels = _exported(model, xs[0], 5, portable=False)
    targets = {str(n.target) for n in with_kernels.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("attnkern.") for t in targets), "the kernels should be in the program"
    torch.export.save(with_kernels, tmp_path / "kernels.pt2")
    out = run_elsewhere(LOADER.format(imports="import attnkern"), "export", tmp_path / "kernels.pt2", inputs, outputs,
                        cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    portable = _exported(model, xs[0], 5, portable=True)
    assert not any("attnkern" in str(n.target) for n in portable.graph.nodes)
    torch.export.save(portable, tmp_path / "portable.pt2")
    out = run_elsewhere(LOADER.format(imports=""), "export", tmp_path / "portable.pt2", inputs, outputs,
                        cwd=tmp_path, without_attnkern=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "attnkern imported: False" in out.stdout


@pytest.mark.parametrize("portable", [False, True], ids=["kernels", "portable"])
def test_torch_export_swinir(portable):
    """SwinIR through torch.export with a dynamic batch, height and width (≥ window + 1): the program
    runs at sizes other than the example's, multiples of the window or not."""
    model = randomise(small_swinir(**SWINIR["pixelshuffledirect"]))
    program = _exported(model, torch.rand(2, 3, 13, 18), 5, portable)
    uses_kernels = any("attnkern" in str(n.target) for n in program.graph.nodes)
    assert uses_kernels != portable
    for x in (torch.rand(2, 3, 13, 18), torch.rand(1, 3, 16, 9), torch.rand(3, 3, 20, 24)):
        with torch.no_grad():
            assert rel_error(program.module()(x), model(x)) <= 1e-5
