"""Swin layers (attnkern.nn.swin) against SwinIR's own formulation with the same weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnkern.nn import swin
from attnkern.nn.swin import (RSTB, BasicLayer, DropPath, Mlp, PatchEmbed, PatchUnEmbed, SwinTransformerBlock, Upsample,
                              UpsampleOneStep, WindowAttention, set_fused_attention)
from conftest import DEVICES, assert_compiles_like_eager, assert_same_parameter_gradients, rel_error

TOL = 1e-10  # float64 parity

# ---- the seed formulation (written here from SwinIR's semantics, independently of attnkern) -------


def seed_relative_position_index(ws):
    """Pairwise (dy, dx) of the tokens of a window, shifted to be non-negative, flattened row-major
    into the (2ws−1)² table (meshgrid / stack, as Swin builds it)."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # [2, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # [N, N, 2]
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def seed_partition(x, ws):
    B, H, W, C = x.shape
    return x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)


def seed_reverse(windows, ws, H, W):
    B = windows.shape[0] // ((H // ws) * (W // ws))
    return windows.view(B, H // ws, W // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, -1)


def seed_calculate_mask(H, W, ws, shift):
    """SwinIR's calculate_mask: 9 regions labelled by slicing, −100 between different labels."""
    img = torch.zeros(1, H, W, 1)
    label = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = label
            label += 1
    mw = seed_partition(img, ws).view(-1, ws * ws)
    diff = mw.unsqueeze(1) - mw.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class SeedWindowAttention(nn.Module):
    """SwinIR's WindowAttention: windows [B_, N, C], q·scale·kᵀ + bias (+ mask via the B_/nW view),
    softmax, dropout, ·v, proj."""

    def __init__(self, dim, ws, heads, qkv_bias=True, qk_scale=None, attn_drop=0.0):
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = qk_scale or (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", seed_relative_position_index(ws))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return self.proj((attn @ v).transpose(1, 2).reshape(B_, N, C))


class SeedMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SeedBlock(nn.Module):
    """SwinIR's SwinTransformerBlock: norm1, roll, partition, attention with the mask of x_size,
    reverse, roll back, residual, norm2 + MLP residual. Sizes that are not multiples of the window are
    zero-padded after norm1 and cropped after the attention, as the original Swin Transformer does."""

    def __init__(self, dim, input_resolution, heads, ws, shift, mlp_ratio=2.0, attn_drop=0.0):
        super().__init__()
        if min(input_resolution) <= ws:
            shift, ws = 0, min(input_resolution)
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SeedWindowAttention(dim, ws, heads, attn_drop=attn_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SeedMlp(dim, int(dim * mlp_ratio))
        Hp, Wp = (-(-s // ws) * ws for s in input_resolution)
        self.register_buffer("attn_mask", seed_calculate_mask(Hp, Wp, ws, shift) if shift else None)

    def forward(self, x, x_size):
        H, W = x_size
        B, L, C = x.shape
        ws, shift = self.ws, self.shift
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = seed_partition(x, ws).view(-1, ws * ws, C)
        mask = seed_calculate_mask(Hp, Wp, ws, shift).to(x) if shift else None
        x = seed_reverse(self.attn(windows, mask).view(-1, ws, ws, C), ws, Hp, Wp)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + x[:, :H, :W].reshape(B, H * W, C)
        return x + self.mlp(self.norm2(x))


def randomize(module, std=0.5):
    """Every parameter random (the bias table and norms too, so that every term matters)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def paired(layer, seed, device="cpu"):
    """The seed loaded (strict) with the layer's state_dict; both float64 on device."""
    layer = layer.to(device, torch.float64)
    seed.load_state_dict(layer.state_dict(), strict=True)
    return layer, seed.to(device, torch.float64)


def assert_same_forward_backward(layer_fn, seed_fn, layer, seed, x):
    """Forward, input gradient and every parameter gradient equal (float64)."""
    x_layer, x_seed = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = layer_fn(x_layer), seed_fn(x_seed)
    assert rel_error(out, ref) <= TOL
    grad = torch.randn_like(ref)
    (out * grad).sum().backward()
    (ref * grad).sum().backward()
    assert rel_error(x_layer.grad, x_seed.grad) <= TOL
    assert_same_parameter_gradients(seed, layer)


# ---- WindowAttention ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ws", [1, 2, 7, 8])
def test_relative_position_index_is_swins(ws):
    attn = WindowAttention(4, ws, 2)
    assert attn.relative_position_index.dtype == torch.int64
    assert torch.equal(attn.relative_position_index, seed_relative_position_index(ws))
    assert attn.relative_position_bias_table.shape == ((2 * ws - 1) ** 2, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ws,heads,dim,nW,with_mask", [
    (7, 3, 12, 6, False), (7, 3, 12, 6, True), (8, 2, 16, 4, True), (4, 1, 6, 3, False), (8, 4, 8, 1, True),
])
def test_window_attention_drop_in(device, ws, heads, dim, nW, with_mask):
    layer, seed = paired(randomize(WindowAttention(dim, (ws, ws), heads)), SeedWindowAttention(dim, ws, heads), device)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in seed.named_parameters()]
    B = 2
    x = torch.randn(B * nW, ws * ws, dim, dtype=torch.float64, device=device)
    mask = None
    if with_mask:
        mask = torch.where(torch.rand(nW, ws * ws, ws * ws, device=device) < 0.3, -100.0, 0.0).double()
    assert layer.uses_kernel()
    assert_same_forward_backward(lambda t: layer(t, mask), lambda t: seed(t, mask), layer, seed, x)


def test_window_attention_shift_mask_of_a_block():
    """The drop-in with the masks a shifted block passes, in float32 as users run it."""
    ws, heads, dim, H, W = 4, 2, 8, 8, 12
    layer = randomize(WindowAttention(dim, ws, heads))
    seed = SeedWindowAttention(dim, ws, heads)
    seed.load_state_dict(layer.state_dict())
    mask = seed_calculate_mask(H, W, ws, 2)
    x = torch.randn(3 * mask.shape[0], ws * ws, dim)
    assert rel_error(layer(x, mask), seed.double()(x.double(), mask.double())) <= 1e-5


def test_window_attention_reference_path_and_qk_scale():
    layer, seed = paired(randomize(WindowAttention(8, 4, 2, qkv_bias=False, qk_scale=0.3)),
                         SeedWindowAttention(8, 4, 2, qkv_bias=False, qk_scale=0.3))
    assert layer.qkv.bias is None and layer.scale == 0.3
    x = torch.randn(6, 16, 8, dtype=torch.float64)
    mask = torch.where(torch.rand(3, 16, 16) < 0.3, -100.0, 0.0).double()
    fused = layer(x, mask)
    set_fused_attention(layer, False)
    assert not layer.uses_kernel()
    assert rel_error(layer(x, mask), fused) <= TOL
    assert rel_error(fused, seed(x, mask)) <= TOL


# ---- SwinTransformerBlock ----------------------------------------------------------------------------

# (input_resolution, x_size, window, shift, heads, dim)
BLOCK_CASES = [
    ((16, 24), (16, 24), 8, 0, 2, 12),
    ((16, 24), (16, 24), 8, 4, 2, 12),
    ((14, 21), (14, 21), 7, 3, 3, 12),
    ((21, 14), (21, 14), 7, 0, 3, 12),
    ((14, 21), (21, 28), 7, 3, 3, 12),   # another size, multiple of the window: mask of that size
    ((16, 24), (8, 32), 8, 4, 2, 12),
    ((16, 16), (13, 19), 8, 4, 2, 12),   # not a multiple: padded, cropped back
    ((14, 14), (10, 17), 7, 3, 3, 6),
    ((14, 14), (5, 3), 7, 3, 1, 4),      # smaller than a window
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("res,x_size,ws,shift,heads,dim", BLOCK_CASES)
def test_block_matches_seed(device, res, x_size, ws, shift, heads, dim):
    block = randomize(SwinTransformerBlock(dim, res, heads, window_size=ws, shift_size=shift, mlp_ratio=2.0))
    block, seed = paired(block, SeedBlock(dim, res, heads, ws, shift), device)
    assert block.uses_kernel() and block.window_size == ws and block.shift_size == shift
    if shift:
        assert torch.equal(block.attn_mask.cpu(), seed_calculate_mask(*res, ws, shift).double())
    else:
        assert block.attn_mask is None and "attn_mask" not in block.state_dict()
    x = torch.randn(2, x_size[0] * x_size[1], dim, dtype=torch.float64, device=device)
    assert_same_forward_backward(lambda t: block(t, x_size), lambda t: seed(t, x_size), block, seed, x)


@pytest.mark.parametrize("res,x_size,ws,shift,heads,dim", [c for c in BLOCK_CASES if c[1][0] % c[2] or c[1][1] % c[2]]
                         + [BLOCK_CASES[1]])
def test_block_fused_equals_reference_path(res, x_size, ws, shift, heads, dim):
    block = randomize(SwinTransformerBlock(dim, res, heads, window_size=ws, shift_size=shift)).double()
    reference_block = set_fused_attention(copy.deepcopy(block), False)
    assert not reference_block.uses_kernel() and not reference_block.attn.fused
    x = torch.randn(2, x_size[0] * x_size[1], dim, dtype=torch.float64)
    assert_same_forward_backward(lambda t: block(t, x_size), lambda t: reference_block(t, x_size),
                                 block, reference_block, x)


def test_block_small_resolution_rule():
    """min(input_resolution) <= window_size: window = min(input_resolution), no shift (as published)."""
    block = SwinTransformerBlock(8, (6, 10), 2, window_size=8, shift_size=4)
    assert (block.window_size, block.shift_size, block.attn.window_size) == (6, 0, (6, 6))
    assert block.attn.relative_position_bias_table.shape == (11 ** 2, 2)
    assert "attn_mask" not in block.state_dict()
    assert block(torch.randn(1, 60, 8), (6, 10)).shape == (1, 60, 8)


def test_block_float32_and_non_contiguous_input():
    block = randomize(SwinTransformerBlock(12, (16, 16), 3, window_size=8, shift_size=4, mlp_ratio=2.0), std=0.3)
    seed = SeedBlock(12, (16, 16), 3, 8, 4)
    seed.load_state_dict(block.state_dict())
    x = torch.randn(2, 12, 16 * 16).transpose(1, 2)  # [B, L, C], not contiguous
    assert not x.is_contiguous()
    assert rel_error(block(x, (16, 16)), seed.double()(x.double(), (16, 16))) <= 1e-5


def test_block_attention_dropout_uses_reference_path(monkeypatch):
    """attn_drop > 0 in training: the reference path (same dropout draws as SwinIR); eval: the kernel."""
    block = randomize(SwinTransformerBlock(8, (8, 8), 2, window_size=4, shift_size=2, mlp_ratio=2.0, attn_drop=0.5))
    block, seed = paired(block, SeedBlock(8, (8, 8), 2, 4, 2, attn_drop=0.5))
    x = torch.randn(2, 64, 8, dtype=torch.float64)
    block.train(), seed.train()
    assert not block.uses_kernel()
    torch.manual_seed(1)
    out = block(x, (8, 8))
    torch.manual_seed(1)
    assert rel_error(out, seed(x, (8, 8))) <= TOL

    def no_kernel(*args, **kwargs):
        raise AssertionError("the kernel ran")

    monkeypatch.setattr(swin, "window_attention", no_kernel)
    block(x, (8, 8))  # training: reference path, the kernel is not called
    block.eval()
    with pytest.raises(AssertionError, match="the kernel ran"):
        block(x, (8, 8))


def test_set_fused_attention_reaches_every_block():
    layer = BasicLayer(8, (8, 8), 3, 2, 4)
    assert set_fused_attention(layer, False) is layer
    assert all(not b.fused and not b.attn.fused for b in layer.blocks)
    set_fused_attention(layer, True)
    assert all(b.fused and b.attn.fused for b in layer.blocks)
    assert "fused=True" in repr(layer.blocks[0])


@pytest.mark.parametrize("fused", [True, False])
def test_empty_batch(fused):
    block = set_fused_attention(SwinTransformerBlock(8, (8, 8), 2, window_size=4, shift_size=2), fused)
    assert block(torch.randn(0, 64, 8), (8, 8)).shape == (0, 64, 8)
    assert block.attn(torch.randn(0, 16, 8), torch.zeros(4, 16, 16)).shape == (0, 16, 8)


class AtSize(nn.Module):
    def __init__(self, block, size):
        super().__init__()
        self.block, self.size = block, size

    def forward(self, x):
        return self.block(x, self.size)


def test_block_compiles():
    block = randomize(SwinTransformerBlock(8, (8, 8), 2, window_size=4, shift_size=2), std=0.3)
    assert_compiles_like_eager(AtSize(block, (8, 12)), torch.randn(2, 96, 8), tolerance=1e-5)


# ---- layers of blocks --------------------------------------------------------------------------------

@pytest.mark.parametrize("resi_connection", ["1conv", "3conv"])
def test_rstb_matches_seed_composition(resi_connection):
    dim, res, heads, ws, x_size = 12, (8, 8), 3, 4, (8, 12)
    rstb = randomize(RSTB(dim, res, depth=2, num_heads=heads, window_size=ws, mlp_ratio=2.0, img_size=8,
                          patch_size=1, resi_connection=resi_connection), std=0.3).double()
    seeds = nn.ModuleList([SeedBlock(dim, res, heads, ws, 0), SeedBlock(dim, res, heads, ws, ws // 2)])
    seeds.load_state_dict(rstb.residual_group.blocks.state_dict())
    seeds.double()
    conv = rstb.conv

    def seed_rstb(t):
        y = t
        for blk in seeds:
            y = blk(y, x_size)
        image = y.transpose(1, 2).reshape(t.shape[0], dim, *x_size)
        return conv(image).flatten(2).transpose(1, 2) + t

    x = torch.randn(2, 96, dim, dtype=torch.float64, requires_grad=True)
    out = rstb(x, x_size)
    ref = seed_rstb(x)
    assert rel_error(out, ref) <= TOL
    g_out, = torch.autograd.grad(out.sum(), x)
    g_ref, = torch.autograd.grad(ref.sum(), x)
    assert rel_error(g_out, g_ref) <= TOL


def test_basic_layer_shifts_and_checkpoint():
    layer = randomize(BasicLayer(8, (12, 12), depth=3, num_heads=2, window_size=4, drop_path=[0.0, 0.1, 0.2]),
                      std=0.3).double()
    assert [b.shift_size for b in layer.blocks] == [0, 2, 0]
    assert isinstance(layer.blocks[0].drop_path, nn.Identity) and layer.blocks[2].drop_path.drop_prob == 0.2
    layer.eval()
    checkpointed = copy.deepcopy(layer)
    checkpointed.use_checkpoint = True
    x = torch.randn(1, 12 * 12, 8, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1, out2 = layer(x1, (12, 12)), checkpointed(x2, (12, 12))
    assert rel_error(out2, out1) <= TOL
    out1.sum().backward()
    out2.sum().backward()
    assert rel_error(x2.grad, x1.grad) <= TOL
    assert_same_parameter_gradients(layer, checkpointed)


# ---- small modules -----------------------------------------------------------------------------------

def test_drop_path():
    x = torch.randn(64, 5, 3) + 3.0
    dp = DropPath(0.25)
    assert dp.eval()(x) is x and "drop_prob=0.25" in repr(dp)
    out = dp.train()(x)
    kept = (out != 0).flatten(1).all(1)
    dropped = (out == 0).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 0 < int(dropped.sum()) < 64
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert swin.drop_path(x, 0.0, True) is x


def test_mlp_patch_embed_and_upsamplers():
    mlp = Mlp(6, 10)
    assert (mlp.fc1.out_features, mlp.fc2.out_features) == (10, 6) and mlp(torch.randn(2, 5, 6)).shape == (2, 5, 6)
    image = torch.randn(2, 6, 5, 7)
    embed = PatchEmbed(img_size=(10, 14), patch_size=1, embed_dim=6, norm_layer=nn.LayerNorm)
    assert embed.patches_resolution == [10, 14] and embed.num_patches == 140
    tokens = PatchEmbed(embed_dim=6)(image)
    assert torch.equal(tokens, image.flatten(2).transpose(1, 2))
    assert torch.equal(PatchUnEmbed(embed_dim=6)(tokens, (5, 7)), image)
    assert embed(image).shape == (2, 35, 6)
    for scale, n_convs in ((1, 0), (2, 1), (4, 2), (8, 3), (3, 1)):
        up = Upsample(scale, 4)
        assert sum(isinstance(m, nn.Conv2d) for m in up) == n_convs
        assert up(torch.randn(1, 4, 3, 5)).shape == (1, 4, 3 * scale, 5 * scale)
    one = UpsampleOneStep(3, 6, 2, (5, 7))
    assert one.num_feat == 6 and one.input_resolution == (5, 7)
    assert one(torch.randn(1, 6, 5, 7)).shape == (1, 2, 15, 21)


# ---- bad inputs --------------------------------------------------------------------------------------

def bad_cases():
    attn = WindowAttention(8, 4, 2)
    block = SwinTransformerBlock(8, (8, 8), 2, window_size=4, shift_size=2)
    return [
        (lambda: WindowAttention(12, 7, 5), ValueError, "divisible by num_heads"),
        (lambda: WindowAttention(12, (7, 8), 2), ValueError, "square"),
        (lambda: WindowAttention(12, (7, 7, 7), 2), ValueError, "pair"),
        (lambda: WindowAttention(12, 0, 2), ValueError, ">= 1"),
        (lambda: attn(torch.randn(16, 8)), ValueError, r"\[B_, N, C\]"),
        (lambda: attn(torch.randn(2, 15, 8)), ValueError, "N = 16"),
        (lambda: attn(torch.randn(2, 16, 6)), ValueError, "C = 8"),
        (lambda: attn(torch.randn(6, 16, 8), torch.zeros(4, 16, 16)), ValueError, "nW dividing"),
        (lambda: attn(torch.randn(6, 16, 8), torch.zeros(3, 16)), ValueError, "mask"),
        (lambda: SwinTransformerBlock(8, (16, 16), 2, window_size=4, shift_size=4), ValueError, "shift_size"),
        (lambda: SwinTransformerBlock(8, (16, 16), 3), ValueError, "divisible"),
        (lambda: block(torch.randn(1, 8, 8, 8), (8, 8)), ValueError, r"\[B, L, C\]"),
        (lambda: block(torch.randn(1, 63, 8), (8, 8)), ValueError, "H·W = 64"),
        (lambda: block(torch.randn(1, 64, 6), (8, 8)), ValueError, "dim = 8"),
        (lambda: block(torch.randn(1, 64, 8), (8, 8, 1)), ValueError, "x_size"),
        (lambda: block("x", (8, 8)), TypeError, "Tensor"),
        (lambda: BasicLayer(8, (8, 8), 2, 2, 4, drop_path=[0.1]), ValueError, "drop_path"),
        (lambda: RSTB(8, (8, 8), 2, 2, 4, resi_connection="2conv"), ValueError, "resi_connection"),
        (lambda: RSTB(8, (8, 8), 2, 2, 4)(torch.randn(1, 60, 8), (8, 8)), ValueError, "H·W"),
        (lambda: PatchEmbed()(torch.randn(2, 3, 4)), ValueError, r"\[B, C, H, W\]"),
        (lambda: PatchUnEmbed(embed_dim=4)(torch.randn(2, 12, 4), (3, 5)), ValueError, "H·W = 15"),
        (lambda: Upsample(5, 8), ValueError, "2\\^n and 3"),
        (lambda: UpsampleOneStep(0, 8, 3), ValueError, "scale"),
        (lambda: DropPath(1.0), ValueError, "drop_prob"),
    ]


@pytest.mark.parametrize("case", range(len(bad_cases())))
def test_bad_inputs(case):
    fn, exc, match = bad_cases()[case]
    with pytest.raises(exc, match=match):
        fn()
