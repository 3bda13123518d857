"""SwinIR (attnkern.models.swinir): the network against SwinIR's formulation, official state_dict keys,
checkpoint loading, and the command line."""

import copy
import io
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnkern.models.swinir import tiling
from attnkern.models.swinir import (SwinIR, main, pad_to_multiple, read_image, select_state_dict, task_config,
                                    tile_starts, tiled_forward, write_image)
from attnkern.nn.swin import set_fused_attention
from conftest import DEVICES, rel_error
from test_swin import SeedBlock, randomize

TOL = 1e-10

# Small configurations, one per reconstruction head (odd image sizes exercise the reflect padding).
CONFIGS = {
    "pixelshuffle": dict(upscale=2, embed_dim=12, depths=[2, 2], num_heads=[2, 3], window_size=4, mlp_ratio=2.0,
                         upsampler="pixelshuffle", img_size=16),
    "pixelshuffle-x3-3conv": dict(upscale=3, embed_dim=16, depths=[2], num_heads=[2], window_size=4, mlp_ratio=1.0,
                                  upsampler="pixelshuffle", img_size=12, resi_connection="3conv"),
    "pixelshuffledirect": dict(upscale=3, embed_dim=12, depths=[2, 2], num_heads=[3, 3], window_size=8,
                               mlp_ratio=2.0, upsampler="pixelshuffledirect", img_size=16),
    "nearest+conv": dict(upscale=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4, mlp_ratio=2.0,
                         upsampler="nearest+conv", img_size=16, resi_connection="3conv"),
    "denoise-gray-255": dict(upscale=1, in_chans=1, embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=8,
                             mlp_ratio=2.0, upsampler="", img_size=16, img_range=255.0),
}


def small_model(name, **overrides):
    return randomize(SwinIR(**dict(CONFIGS[name], **overrides)), std=0.2).eval()


def seed_swinir(model, x):
    """SwinIR's forward written out (reflect pad, mean and img_range, conv_first, RSTBs of seed blocks,
    norm, conv_after_body + residual, the head, crop), reusing the model's convolutions and norms and
    the seed blocks of test_swin loaded with the model's block weights."""
    H, W = x.shape[2:]
    ws = model.window_size
    x = F.pad(x, (0, (ws - W % ws) % ws, 0, (ws - H % ws) % ws), "reflect")
    mean = (torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1) if x.shape[1] == 3 else torch.zeros(1)).to(x)
    x = (x - mean) * model.img_range
    first = model.conv_first(x)
    size = first.shape[2:]
    tokens = model.patch_embed.norm(first.flatten(2).transpose(1, 2))
    for layer in model.layers:
        y = tokens
        for block in layer.residual_group.blocks:
            seed = SeedBlock(model.embed_dim, block.input_resolution, block.num_heads, block.window_size,
                             block.shift_size, model.mlp_ratio).to(x.device, x.dtype)
            seed.load_state_dict(block.state_dict())
            y = seed(y, size)
        image = y.transpose(1, 2).reshape(y.shape[0], -1, *size)
        tokens = layer.conv(image).flatten(2).transpose(1, 2) + tokens
    features = model.norm(tokens).transpose(1, 2).reshape(first.shape)
    body = model.conv_after_body(features) + first
    if model.upsampler == "pixelshuffle":
        out = model.conv_last(model.upsample(model.conv_before_upsample(body)))
    elif model.upsampler == "pixelshuffledirect":
        out = model.upsample(body)
    elif model.upsampler == "nearest+conv":
        y = model.conv_before_upsample(body)
        y = F.leaky_relu(model.conv_up1(F.interpolate(y, scale_factor=2, mode="nearest")), 0.2)
        y = F.leaky_relu(model.conv_up2(F.interpolate(y, scale_factor=2, mode="nearest")), 0.2)
        out = model.conv_last(F.leaky_relu(model.conv_hr(y), 0.2))
    else:
        out = x + model.conv_last(body)
    out = out / model.img_range + mean
    return out[:, :, :H * model.upscale, :W * model.upscale]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_equals_seed_and_reference_path(device, name):
    model = small_model(name).to(device, torch.float64)
    x = torch.rand(1, model.in_chans, 13, 19, dtype=torch.float64, device=device)
    out = model(x)
    assert out.shape == (1, model.in_chans, 13 * model.upscale, 19 * model.upscale)
    assert rel_error(out, seed_swinir(model, x)) <= TOL
    set_fused_attention(model, False)
    assert rel_error(model(x), out) <= TOL


def test_input_gradient_fused_equals_reference_path():
    model = small_model("pixelshuffle").double()
    reference = set_fused_attention(copy.deepcopy(model), False)
    x1 = torch.rand(1, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    grad = torch.randn(1, 3, 18, 22, dtype=torch.float64)
    (model(x1) * grad).sum().backward()
    (reference(x2) * grad).sum().backward()
    assert rel_error(x1.grad, x2.grad) <= TOL
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert rel_error(p.grad, q.grad) <= 1e-9, name


def test_image_smaller_than_the_reflect_limit_and_float32():
    model = small_model("pixelshuffledirect")
    out = model(torch.rand(1, 3, 3, 5))  # pad 5 and 3 rows: longer than the image, reflection repeated
    assert out.shape == (1, 3, 9, 15) and torch.isfinite(out).all()
    x = torch.rand(1, 3, 13, 19)
    assert rel_error(model(x), seed_swinir(copy.deepcopy(model).double(), x.double())) <= 1e-5


def test_init_and_mean():
    model = SwinIR(img_size=8, embed_dim=12, depths=[2], num_heads=[2], window_size=4, upsampler="pixelshuffle")
    block = model.layers[0].residual_group.blocks[1]
    assert torch.all(block.attn.qkv.bias == 0) and block.attn.qkv.weight.abs().max() <= 0.12
    assert torch.all(block.norm1.weight == 1) and torch.all(model.norm.bias == 0)
    assert "mean" not in model.state_dict()
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.4488, 0.4371, 0.4040]))
    assert model.double().mean.dtype == torch.float64
    drop = [b.drop_path for layer in SwinIR(depths=[2, 2], num_heads=[2, 2], embed_dim=8, img_size=8,
                                             window_size=4).layers for b in layer.residual_group.blocks]
    assert isinstance(drop[0], nn.Identity)
    assert [d.drop_prob for d in drop[1:]] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])


# ---- state_dict keys ---------------------------------------------------------------------------------

BLOCK_PARAMS = ["norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.relative_position_index",
                "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]


def conv_keys(prefix, resi_connection):
    parts = [""] if resi_connection == "1conv" else [".0", ".2", ".4"]
    return [f"{prefix}{p}.{t}" for p in parts for t in ("weight", "bias")]


def official_keys(depths, upscale, upsampler, resi_connection="1conv"):
    """The published network's state_dict keys (seeds/README.md and the seed document)."""
    keys = ["conv_first.weight", "conv_first.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]
    for i, depth in enumerate(depths):
        for j in range(depth):
            prefix = f"layers.{i}.residual_group.blocks.{j}."
            keys += [prefix + k for k in BLOCK_PARAMS] + ([prefix + "attn_mask"] if j % 2 else [])
        keys += conv_keys(f"layers.{i}.conv", resi_connection)
    keys += ["norm.weight", "norm.bias"] + conv_keys("conv_after_body", resi_connection)
    if upsampler == "pixelshuffle":
        n_convs = 1 if upscale == 3 else upscale.bit_length() - 1
        keys += ["conv_before_upsample.0.weight", "conv_before_upsample.0.bias", "conv_last.weight", "conv_last.bias"]
        keys += [f"upsample.{2 * i}.{t}" for i in range(n_convs) for t in ("weight", "bias")]
    elif upsampler == "pixelshuffledirect":
        keys += ["upsample.0.weight", "upsample.0.bias"]
    elif upsampler == "nearest+conv":
        keys += [f"{m}.{t}" for m in ("conv_before_upsample.0", "conv_up1", "conv_up2", "conv_hr", "conv_last")
                 for t in ("weight", "bias")]
    else:
        keys += ["conv_last.weight", "conv_last.bias"]
    return set(keys)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_keys_are_official(name):
    cfg = CONFIGS[name]
    model = SwinIR(**cfg)
    assert set(model.state_dict()) == official_keys(cfg["depths"], cfg["upscale"], cfg["upsampler"],
                                                    cfg.get("resi_connection", "1conv"))
    x8 = SwinIR(img_size=8, embed_dim=8, depths=[3], num_heads=[2], window_size=2, upscale=8, upsampler="pixelshuffle")
    assert set(x8.state_dict()) == official_keys([3], 8, "pixelshuffle")
    mask = model.layers[0].residual_group.blocks[1].attn_mask
    ws = cfg["window_size"]
    assert mask.shape == ((cfg["img_size"] // ws) ** 2, ws * ws, ws * ws)


# ---- checkpoints -------------------------------------------------------------------------------------

CKPT_CONFIG = dict(CONFIGS["pixelshuffle"], window_size=8)


@pytest.fixture
def trained():
    """A model trained at img_size 48 (its attn_mask buffers are [36, 64, 64]) and its state_dict."""
    model = randomize(SwinIR(**dict(CKPT_CONFIG, img_size=48)), std=0.2).eval()
    return model, model.state_dict()


@pytest.mark.parametrize("layout", ["params", "params_ema", "bare", "file"])
def test_from_checkpoint(trained, layout, tmp_path):
    model, state = trained
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    checkpoint = {"params": state, "bare": state, "file": {"params": state},
                  "params_ema": {"params_ema": state, "params": other}}[layout]
    if layout == "file":
        torch.save(checkpoint, tmp_path / "net.pth")
        checkpoint = str(tmp_path / "net.pth")
    loaded = SwinIR.from_checkpoint(checkpoint, **dict(CKPT_CONFIG, img_size=64))
    assert not loaded.training
    assert loaded.layers[0].residual_group.blocks[1].attn_mask.shape == (64, 64, 64)
    x = torch.rand(1, 3, 13, 19)
    assert rel_error(loaded(x), model(x)) <= 1e-6
    if layout == "params_ema":
        explicit = SwinIR.from_checkpoint(checkpoint, param_key="params", **CKPT_CONFIG)
        assert torch.equal(explicit.conv_first.weight, other["conv_first.weight"])


def test_select_state_dict():
    sd = {"a": torch.zeros(1)}
    assert select_state_dict({"params": sd, "params_ema": {"b": sd["a"]}})[1] == "params_ema"
    assert select_state_dict({"params": sd}) == (sd, "params")
    assert select_state_dict(sd) == (sd, None)
    with pytest.raises(ValueError, match="no state_dict under 'params_ema'"):
        select_state_dict({"params": sd}, "params_ema")


def test_checkpoint_mismatch_is_named(trained):
    _, state = trained
    missing = {k: v for k, v in state.items() if k != "layers.1.conv.weight"}
    with pytest.raises(ValueError, match=r"missing keys \(1\): layers\.1\.conv\.weight"):
        SwinIR.from_checkpoint(missing, **CKPT_CONFIG)
    extra = dict(state, **{"conv_extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): conv_extra\.weight"):
        SwinIR.from_checkpoint(extra, **CKPT_CONFIG)
    with pytest.raises(ValueError, match=r"shape mismatches \(2\): upsample\.0\.bias"):
        SwinIR.from_checkpoint(state, **dict(CKPT_CONFIG, upscale=3))
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): layers\.2\."):
        SwinIR.from_checkpoint(state, **dict(CKPT_CONFIG, depths=[2, 2, 2], num_heads=[2, 3, 3]))
    with pytest.raises(ValueError, match=r"relative_position_bias_table"):
        SwinIR.from_checkpoint(state, **dict(CKPT_CONFIG, window_size=4))
    with pytest.raises(TypeError, match="checkpoint path or dict"):
        SwinIR.from_checkpoint(3, **CKPT_CONFIG)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(upsampler="pixelshuffle", upscale=5), ValueError, "2\\^n and 3"),
    (dict(upsampler="nearest+conv", upscale=2), ValueError, "upscale 4 only"),
    (dict(upsampler="bicubic"), ValueError, "upsampler must be one of"),
    (dict(resi_connection="2conv"), ValueError, "resi_connection"),
    (dict(num_heads=[3]), ValueError, "divisible"),
    (dict(depths=[2, 2]), ValueError, "one entry per RSTB"),
    (dict(windowsize=8), TypeError, "unexpected arguments"),
    (dict(window_size=(4, 4)), ValueError, "window_size"),
])
def test_bad_config(kwargs, exc, match):
    base = dict(img_size=8, embed_dim=10, depths=[2], num_heads=[2], window_size=4, upscale=2, upsampler="pixelshuffle")
    with pytest.raises(exc, match=match):
        SwinIR(**dict(base, **kwargs))


def test_bad_input():
    model = SwinIR(img_size=8, embed_dim=8, depths=[2], num_heads=[2], window_size=4, upsampler="pixelshuffle")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(3, 8, 8))
    ape = SwinIR(img_size=8, embed_dim=8, depths=[2], num_heads=[2], window_size=4, ape=True, upsampler="pixelshuffle")
    assert "absolute_pos_embed" in ape.state_dict() and ape(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="ape=True"):
        ape(torch.rand(1, 3, 12, 8))


# ---- command line ------------------------------------------------------------------------------------

def test_task_config_is_the_official_table():
    c = task_config("classical_sr", 4)
    assert (c["embed_dim"], c["depths"], c["num_heads"], c["window_size"], c["mlp_ratio"], c["upsampler"],
            c["img_range"], c["upscale"]) == (180, [6] * 6, [6] * 6, 8, 2, "pixelshuffle", 1.0, 4)
    c = task_config("lightweight_sr", 2)
    assert (c["embed_dim"], c["depths"], c["num_heads"], c["upsampler"]) == (60, [6] * 4, [6] * 4, "pixelshuffledirect")
    c = task_config("real_sr")
    assert (c["upscale"], c["upsampler"], c["embed_dim"], c["resi_connection"]) == (4, "nearest+conv", 180, "1conv")
    c = task_config("real_sr", 4, large=True)
    assert (c["embed_dim"], c["depths"], c["num_heads"], c["resi_connection"]) == (240, [6] * 9, [8] * 9, "3conv")
    c = task_config("denoise", in_chans=1)
    assert (c["upscale"], c["upsampler"], c["window_size"], c["img_size"], c["in_chans"]) == (1, "", 8, 128, 1)
    c = task_config("jpeg")
    assert (c["window_size"], c["img_range"], c["img_size"], c["upscale"]) == (7, 255.0, 126, 1)
    for args, match in [(("classical_sr",), "needs --scale"), (("denoise", 2), "×1 only"), (("real_sr", 2), "×4"),
                        (("deblur", 1), "unknown task")]:
        with pytest.raises(ValueError, match=match):
            task_config(*args)


def test_tiling():
    assert tile_starts(40, 16, 4) == [0, 12, 24]
    assert tile_starts(16, 16, 4) == [0]

    def upsample_pixels(t):  # a per-pixel ×2 model: tiling must not change it
        return t.repeat_interleave(2, -2).repeat_interleave(2, -1) * 3.0 + 1.0

    img = torch.rand(2, 3, 37, 50)
    stream = io.StringIO()
    tiling._progress_bar(3, 4, stream)
    assert "3/4" in stream.getvalue()
    for tile, overlap in [(16, 4), (8, 0), (37, 5), (100, 32)]:
        assert torch.allclose(tiled_forward(upsample_pixels, img, 2, tile, overlap), upsample_pixels(img), atol=1e-6)
    with pytest.raises(ValueError, match="tile_overlap"):
        tiled_forward(upsample_pixels, img, 2, 16, 16)


def test_pad_to_multiple_is_the_official_flip_pad():
    img = torch.rand(1, 3, 13, 19)
    padded = pad_to_multiple(img, 8)
    official = torch.cat([img, torch.flip(img, [2])], 2)[:, :, :16, :]
    official = torch.cat([official, torch.flip(official, [3])], 3)[:, :, :, :24]
    assert torch.equal(padded, official)
    assert pad_to_multiple(torch.rand(1, 1, 2, 3), 8).shape == (1, 1, 8, 8)


LIGHT = task_config("lightweight_sr", 2)


@pytest.fixture(scope="module")
def light_checkpoint(tmp_path_factory):
    """A lightweight_sr ×2 checkpoint whose network is per-pixel (centre taps only, body output zero), so
    tiled inference must equal whole-image inference."""
    torch.manual_seed(0)
    model = SwinIR(**LIGHT)
    with torch.no_grad():
        for conv in (model.conv_first, model.upsample[0]):
            centre = conv.weight[:, :, 1, 1].clone()
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = centre * 3.0
        model.conv_after_body.weight.zero_()
        model.conv_after_body.bias.zero_()
    path = tmp_path_factory.mktemp("ckpt") / "light_x2.pth"
    torch.save({"params": model.state_dict()}, path)
    return path, model.eval()


def test_cli_npy_tiled_equals_untiled(light_checkpoint, tmp_path, capsys):
    weights, model = light_checkpoint
    img = torch.rand(13, 19, 3)
    import numpy as np
    np.save(tmp_path / "in.npy", img.numpy())
    base = ["--task", "lightweight_sr", "--scale", "2", "--weights", str(weights), "--input", str(tmp_path / "in.npy"),
            "--device", "cpu"]
    assert main(base + ["--output", str(tmp_path / "whole.npy")]) == 0
    assert main(base + ["--output", str(tmp_path / "tiled.npy"), "--tile", "16", "--tile-overlap", "8"]) == 0
    assert re.search(r"tiles \[#+\] 2/2", capsys.readouterr().err)
    whole, tiled = np.load(tmp_path / "whole.npy"), np.load(tmp_path / "tiled.npy")
    assert whole.shape == tiled.shape == (26, 38, 3)
    assert rel_error(torch.from_numpy(tiled), torch.from_numpy(whole)) <= 1e-5
    with torch.no_grad():
        direct = model(pad_to_multiple(img.permute(2, 0, 1)[None], 8))[0, :, :26, :38].permute(1, 2, 0)
    assert rel_error(torch.from_numpy(whole), direct) <= 1e-5
    read = read_image(str(tmp_path / "in.npy"))
    assert read.shape == (1, 3, 13, 19) and torch.equal(read[0].permute(1, 2, 0), img)


def test_cli_png(light_checkpoint, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    weights, _ = light_checkpoint
    pixels = (torch.rand(13, 21, 3) * 255).round().to(torch.uint8)
    Image.fromarray(pixels.numpy()).save(tmp_path / "in.png")
    base = ["--task", "lightweight_sr", "--scale", "2", "--weights", str(weights), "--input", str(tmp_path / "in.png"),
            "--device", "cpu", "--quiet"]
    main(base + ["--output", str(tmp_path / "whole.png")])
    main(base + ["--output", str(tmp_path / "tiled.png"), "--tile", "16", "--tile-overlap", "8"])
    whole, tiled = (Image.open(tmp_path / n) for n in ("whole.png", "tiled.png"))
    assert whole.size == tiled.size == (42, 26) and whole.mode == "RGB"
    whole, tiled = (torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).int() for im in (whole, tiled))
    assert (whole - tiled).abs().max() <= 1
    assert torch.equal(read_image(str(tmp_path / "in.png")), (pixels.float() / 255).permute(2, 0, 1)[None])


def test_cli_without_pillow(light_checkpoint, tmp_path, monkeypatch):
    weights, _ = light_checkpoint
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` raises ImportError
    with pytest.raises(ImportError, match="pip install pillow"):
        read_image(str(tmp_path / "in.png"))
    with pytest.raises(ImportError, match="pip install pillow"):
        write_image(torch.rand(1, 3, 4, 4), str(tmp_path / "out.png"))
    with pytest.raises(SystemExit, match="pip install pillow"):
        main(["--task", "lightweight_sr", "--scale", "2", "--weights", str(weights), "--input", "in.png",
              "--output", "out.png", "--device", "cpu"])


def test_cli_errors(light_checkpoint, tmp_path):
    weights, _ = light_checkpoint
    import numpy as np
    np.save(tmp_path / "in.npy", np.zeros((8, 8, 3), np.float32))
    args = ["--weights", str(weights), "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npy")]
    with pytest.raises(SystemExit, match="--half needs a CUDA device"):
        main(["--task", "lightweight_sr", "--scale", "2", "--device", "cpu", "--half"] + args)
    with pytest.raises(SystemExit, match="does not match this configuration"):
        main(["--task", "lightweight_sr", "--scale", "3", "--device", "cpu"] + args)
    with pytest.raises(SystemExit, match="needs --scale"):
        main(["--task", "lightweight_sr", "--device", "cpu"] + args)
    np.save(tmp_path / "gray.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(SystemExit, match="H×W×3"):
        main(["--task", "lightweight_sr", "--scale", "2", "--device", "cpu", "--weights", str(weights), "--input",
              str(tmp_path / "gray.npy"), "--output", str(tmp_path / "o.npy")])


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "attnkern.models.swinir", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--tile-overlap" in result.stdout and "classical_sr" in result.stdout
