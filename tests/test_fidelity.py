"""Fidelity to the official tools: the SwinIR command against the official test script's padding and
tile procedure; WindowAttention loading timm's and SwinIR's state_dicts, CrissCrossAttention loading
mmcv's, all with strict=True and the same outputs.

The official procedures are written here from their documented behaviour (main_test_swinir.py: pad
(h // window + 1)·window − h rows and columns of flipped image, run whole or in tiles with
stride = tile − tile_overlap, starts range(0, h − tile, stride) + [h − tile], outputs summed into E
and counted in W, E / W, crop), independently of attnkern's code.
"""

import numpy as np
import pytest
import torch
from torch import nn

from attnkern import nn as ak
from attnkern import reference
from attnkern.models.swinir import SwinIR, main, official_pad, task_config
from conftest import rel_error


def official_script(model, img_lq, window_size, scale, tile=None, tile_overlap=32):
    """What main_test_swinir.py does with one image [1, C, h, w]: pad, run (whole or tiled), crop."""
    _, _, h_old, w_old = img_lq.shape
    h_pad = (h_old // window_size + 1) * window_size - h_old
    w_pad = (w_old // window_size + 1) * window_size - w_old
    img_lq = torch.cat([img_lq, torch.flip(img_lq, [2])], 2)[:, :, :h_old + h_pad, :]
    img_lq = torch.cat([img_lq, torch.flip(img_lq, [3])], 3)[:, :, :, :w_old + w_pad]
    with torch.no_grad():
        if tile is None:
            output = model(img_lq)
        else:
            b, c, h, w = img_lq.shape
            tile = min(tile, h, w)
            assert tile % window_size == 0
            stride = tile - tile_overlap
            h_idx_list = list(range(0, h - tile, stride)) + [h - tile]
            w_idx_list = list(range(0, w - tile, stride)) + [w - tile]
            E = torch.zeros(b, c, h * scale, w * scale).type_as(img_lq)
            W = torch.zeros_like(E)
            for h_idx in h_idx_list:
                for w_idx in w_idx_list:
                    out_patch = model(img_lq[..., h_idx:h_idx + tile, w_idx:w_idx + tile])
                    E[..., h_idx * scale:(h_idx + tile) * scale, w_idx * scale:(w_idx + tile) * scale] += out_patch
                    W[..., h_idx * scale:(h_idx + tile) * scale, w_idx * scale:(w_idx + tile) * scale] += 1
            output = E / W
    return output[..., :h_old * scale, :w_old * scale]


@pytest.fixture(scope="module")
def light_x2(tmp_path_factory):
    """An official-layout lightweight_sr ×2 checkpoint with random weights (window 8)."""
    model = SwinIR(**task_config("lightweight_sr", 2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("swinir") / "light_x2.pth"
    torch.save({"params": model.state_dict()}, path)
    return path, model.eval()


def run_cli(weights, img, tmp_path, *extra):
    np.save(tmp_path / "in.npy", img[0].permute(1, 2, 0).numpy())
    out = tmp_path / "out.npy"
    assert main(["--task", "lightweight_sr", "--scale", "2", "--weights", str(weights), "--input",
                 str(tmp_path / "in.npy"), "--output", str(out), "--device", "cpu", "--quiet", *extra]) == 0
    return torch.from_numpy(np.load(out)).permute(2, 0, 1)[None]


@pytest.mark.parametrize("size, tile", [((48, 40), None), ((45, 37), None), ((3, 5), None), ((48, 40), 32),
                                        ((53, 35), 24)],
                         ids=["multiple", "not-multiple", "smaller-than-half-a-window", "multiple-tiled",
                              "not-multiple-tiled"])
def test_swinir_command_equals_official_script(light_x2, tmp_path, size, tile):
    weights, model = light_x2
    img = torch.rand(1, 3, *size)
    extra = [] if tile is None else ["--tile", str(tile), "--tile-overlap", "8"]
    got = run_cli(weights, img, tmp_path, *extra)
    want = official_script(model, img, 8, 2, tile, 8)
    assert got.shape == want.shape == (1, 3, 2 * size[0], 2 * size[1])
    assert rel_error(got, want) <= 1e-5


def test_official_padding_is_a_whole_window_on_multiples(light_x2, tmp_path):
    """A 48×40 image runs at 56×48 (the script's rule) and the border differs from the unpadded run;
    --pad minimal runs it as it is."""
    weights, model = light_x2
    img = torch.rand(1, 3, 48, 40)
    assert official_pad(img, 8).shape[-2:] == (56, 48)
    assert official_pad(img, 8, "minimal").shape[-2:] == (48, 40)
    assert official_pad(torch.rand(1, 3, 45, 37), 8, "minimal").shape[-2:] == (48, 40)
    with torch.no_grad():
        unpadded = model(img)
    official = run_cli(weights, img, tmp_path)
    minimal = run_cli(weights, img, tmp_path, "--pad", "minimal")
    assert rel_error(minimal, unpadded) <= 1e-5
    assert (official - unpadded).abs().amax() > 1e-3, "the official padding should change the border"


def test_tile_not_a_multiple_of_the_window(light_x2, tmp_path):
    weights, _ = light_x2
    with pytest.raises(SystemExit, match="multiple of the window"):
        run_cli(weights, torch.rand(1, 3, 40, 40), tmp_path, "--tile", "20")


# ---- state_dicts of timm, SwinIR and mmcv -----------------------------------------------------------

class TimmStyleWindowAttention(nn.Module):
    """timm's WindowAttention as its state_dict and forward are laid out: the index is a
    non-persistent buffer (absent from state_dict)."""

    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        self.num_heads, self.window_size, self.scale = num_heads, window_size, (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(0.5 * torch.randn((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", reference.relative_position_index(window_size),
                             persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias.permute(2, 0, 1)
        if mask is not None:
            nW = mask.shape[0]
            attn = (attn.view(B_ // nW, nW, self.num_heads, N, N) + mask[None, :, None]).view(B_, -1, N, N)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B_, N, C))


def test_window_attention_loads_timm_and_swinir_state_dicts():
    timm_layer = TimmStyleWindowAttention(24, 4, 3)
    state = timm_layer.state_dict()
    assert "relative_position_index" not in state
    layer = ak.WindowAttention(24, 4, 3)
    layer.load_state_dict(state, strict=True)
    x = torch.randn(8, 16, 24)
    mask = torch.zeros(4, 16, 16).masked_fill(torch.rand(4, 16, 16) < 0.3, -100.0)
    with torch.no_grad():
        for m in (None, mask):
            assert rel_error(layer(x, m), timm_layer(x, m)) <= 1e-5
    # SwinIR's state_dicts carry the index: it loads as it is
    swinir_state = dict(state, relative_position_index=reference.relative_position_index(4))
    other = ak.WindowAttention(24, 4, 3)
    other.load_state_dict(swinir_state, strict=True)
    with torch.no_grad():
        assert rel_error(other(x), timm_layer(x)) <= 1e-5
    # still strict about everything else
    with pytest.raises(RuntimeError, match="qkv.bias"):
        ak.WindowAttention(24, 4, 3).load_state_dict({k: v for k, v in state.items() if k != "qkv.bias"})


def test_window_attention_loads_real_timm():
    timm = pytest.importorskip("timm")
    from timm.models.swin_transformer import WindowAttention as TimmWindowAttention

    timm_layer = TimmWindowAttention(24, num_heads=3, window_size=4).eval()
    layer = ak.WindowAttention(24, 4, 3).eval()
    layer.load_state_dict(timm_layer.state_dict(), strict=True)
    x = torch.randn(8, 16, 24)
    with torch.no_grad():
        assert rel_error(layer(x), timm_layer(x)) <= 1e-5


class Scale(nn.Module):
    """mmcv's Scale: a learnable 0-dim factor."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x):
        return x * self.scale


class MmcvStyleCrissCross(nn.Module):
    """mmcv.ops.CrissCrossAttention as its state_dict and forward are laid out."""

    def __init__(self, in_channels):
        super().__init__()
        self.query_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.key_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0.0)

    def forward(self, x):
        q, k, v = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        energy = torch.einsum("bchw,bchk->bhwk", q, k)  # along the row
        energy_col = torch.einsum("bchw,bckw->bhwk", q, k)  # along the column
        H = x.shape[2]
        energy_col = energy_col.masked_fill(torch.eye(H, dtype=torch.bool)[:, None, :], float("-inf"))
        attn = torch.cat([energy, energy_col], dim=-1).softmax(-1)
        W = x.shape[3]
        out = torch.einsum("bhwk,bchk->bchw", attn[..., :W], v) + torch.einsum("bhwk,bckw->bchw", attn[..., W:], v)
        return self.gamma(out) + x


def test_criss_cross_loads_mmcv_state_dict():
    mmcv_layer = MmcvStyleCrissCross(32)
    with torch.no_grad():
        mmcv_layer.gamma.scale.fill_(0.8)
    state = mmcv_layer.state_dict()
    assert state["gamma.scale"].shape == ()
    layer = ak.CrissCrossAttention(32)
    layer.load_state_dict(state, strict=True)
    assert layer.gamma.shape == (1,) and layer.gamma.item() == pytest.approx(0.8)
    x = torch.randn(2, 32, 9, 13)
    with torch.no_grad():
        assert rel_error(layer(x), mmcv_layer(x)) <= 1e-5
    # its own state_dicts keep loading, and a model holding the layer maps mmcv's key under its prefix
    ak.CrissCrossAttention(32).load_state_dict(layer.state_dict(), strict=True)
    holder = nn.Sequential(nn.Identity(), ak.CrissCrossAttention(32))
    holder.load_state_dict({f"1.{k}": v for k, v in state.items()}, strict=True)
    assert holder[1].gamma.item() == pytest.approx(0.8)
