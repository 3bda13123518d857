"""The seed-002 layers of attnkern.nn against their seed formulations (attnkern.reference.modules)
with the same weights: outputs, input and parameter gradients in float64; batch independence of
DoubleAttention; torch.compile; CPU bfloat16 autocast; bad arguments and inputs."""

import pytest
import torch
from torch import nn

from attnkern import nn as ak
from attnkern.reference import modules as seeds
from conftest import DEVICES, assert_compiles_like_eager, rel_error

# (name, seed constructor, attnkern constructor, input shapes); norm layers run in training mode.
CASES = [
    ("SE", lambda: seeds.SeedSEAttention(16, 4), lambda: ak.SEAttention(16, 4), [(2, 16, 5, 7), (1, 16, 1, 1)]),
    ("ChannelAttention", lambda: seeds.SeedChannelAttention(16, 4), lambda: ak.ChannelAttention(16, 4),
     [(2, 16, 5, 7)]),
    ("SpatialAttention", lambda: seeds.SeedSpatialAttention(3), lambda: ak.SpatialAttention(3), [(2, 5, 6, 7)]),
    ("CBAM", lambda: seeds.SeedCBAM(16, 4), lambda: ak.CBAM(16, 4), [(2, 16, 17, 19), (1, 16, 1, 1)]),
    ("CBAM k3", lambda: seeds.SeedCBAM(8, 2, 3), lambda: ak.CBAM(8, 2, 3), [(3, 8, 4, 5)]),
    ("SKConv", lambda: seeds.SeedSKConv(8, M=2, G=2, r=2, L=4), lambda: ak.SKConv(8, M=2, G=2, r=2, L=4),
     [(2, 8, 5, 7)]),
    ("SKConv stride 2", lambda: seeds.SeedSKConv(8, stride=2, L=4), lambda: ak.SKConv(8, stride=2, L=4),
     [(2, 8, 7, 6)]),
    ("SGE", lambda: seeds.SeedSGE(4), lambda: ak.SGE(4), [(2, 16, 5, 7), (1, 8, 3, 1)]),
    ("scSE", lambda: seeds.SeedscSE(6), lambda: ak.scSE(6), [(2, 6, 5, 7), (1, 6, 1, 1)]),
    ("SCConv", lambda: seeds.SeedSCConv(8, 8, 1, 2, 2, 2, 2, nn.BatchNorm2d),
     lambda: ak.SCConv(8, 8, 1, 2, 2, 2, 2, nn.BatchNorm2d), [(2, 8, 7, 9)]),
    ("SCConv stride 2", lambda: seeds.SeedSCConv(4, 4, 2, 1, 1, 1, 3, nn.BatchNorm2d),
     lambda: ak.SCConv(4, 4, 2, 1, 1, 1, 3, nn.BatchNorm2d), [(2, 4, 7, 6)]),
    ("SplitAttn", lambda: seeds.SeedSplitAttn(16, groups=2, rd_channels=4),
     lambda: ak.SplitAttn(16, groups=2, rd_channels=4), [(2, 16, 5, 7), (1, 16, 3, 3)]),
    ("SplitAttn radix 4 BN", lambda: seeds.SeedSplitAttn(8, 12, radix=4, norm_layer=nn.BatchNorm2d),
     lambda: ak.SplitAttn(8, 12, radix=4, norm_layer=nn.BatchNorm2d), [(2, 8, 5, 6)]),
    ("SplitAttn radix 1", lambda: seeds.SeedSplitAttn(8, radix=1, stride=2),
     lambda: ak.SplitAttn(8, radix=1, stride=2), [(2, 8, 5, 6)]),
    # Hidden widths above make_divisible's floor of 32: 48·2·0.375 = 36 rounds to 40; 16·2·1.11875 = 35.8
    # rounds to 32, which loses more than 10 %, so up to 40 (the seed and the layer each round their own).
    ("SplitAttn rounded width", lambda: seeds.SeedSplitAttn(48, rd_ratio=0.375),
     lambda: ak.SplitAttn(48, rd_ratio=0.375), [(2, 48, 4, 5)]),
    ("SplitAttn rounded-up width", lambda: seeds.SeedSplitAttn(16, rd_ratio=1.11875),
     lambda: ak.SplitAttn(16, rd_ratio=1.11875), [(2, 16, 4, 5)]),
]


def randomise(module: nn.Module) -> None:
    """Parameters away from their initial values (SGE's weight starts at 0: it would test nothing)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)


def assert_same_gradients_by_name(seed: nn.Module, layer: nn.Module) -> None:
    """Equal gradients, name by name. The absolute tolerance is relative to the layer's largest gradient:
    a bias followed by BatchNorm (SplitAttn's fc1) has a gradient that is zero up to rounding."""
    params = dict(layer.named_parameters())
    assert set(params) == {n for n, _ in seed.named_parameters()}
    scale = max(p.grad.abs().max().item() for _, p in seed.named_parameters())
    for name, p_seed in seed.named_parameters():
        torch.testing.assert_close(params[name].grad, p_seed.grad, rtol=1e-9, atol=1e-12 * scale, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,make_seed,make_layer,shapes", CASES, ids=[c[0] for c in CASES])
def test_layer_matches_seed(device, name, make_seed, make_layer, shapes):
    seed = make_seed().double().to(device)
    randomise(seed)
    layer = make_layer().double().to(device)
    layer.load_state_dict(seed.state_dict())
    for shape in shapes:
        if shape[0] == 1 and "BN" in name:
            continue
        x = torch.randn(shape, dtype=torch.float64, device=device)
        x_seed, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_seed, out = seed(x_seed), layer(x_ours)
        assert out.shape == out_seed.shape
        assert rel_error(out, out_seed) <= 1e-10, shape
        grad = torch.randn_like(out)
        seed.zero_grad()
        layer.zero_grad()
        out_seed.backward(grad)
        out.backward(grad)
        assert rel_error(x_ours.grad, x_seed.grad) <= 1e-10, shape
        assert_same_gradients_by_name(seed, layer)


# ---- DoubleAttention: the paper's formula, not the published batch softmax --------------------


def paper_double_attention(layer: ak.DoubleAttention, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    z = seeds.double_attention(layer.convA(x).flatten(2), layer.convB(x).flatten(2), layer.convV(x).flatten(2))
    z = z.view(b, layer.c_m, h, w)
    return layer.conv_reconstruct(z) if layer.reconstruct else z


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reconstruct,shape", [(True, (2, 8, 5, 7)), (False, (1, 8, 3, 3)), (True, (3, 8, 1, 4))])
def test_double_attention_is_the_paper_formula(device, reconstruct, shape):
    seed = seeds.SeedDoubleAttention(8, 6, 5, reconstruct).double().to(device)
    layer = ak.DoubleAttention(8, 6, 5, reconstruct).double().to(device)
    layer.load_state_dict(seed.state_dict())  # the published weights load
    x = torch.randn(shape, dtype=torch.float64, device=device)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, out = paper_double_attention(layer, x_ref), layer(x_ours)
    assert rel_error(out, expected) <= 1e-12
    grad = torch.randn_like(out)
    params = list(layer.parameters())
    grads_ref = torch.autograd.grad(expected, [x_ref] + params, grad)
    grads = torch.autograd.grad(out, [x_ours] + params, grad)
    for a, b in zip(grads, grads_ref):
        assert rel_error(a, b) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_double_attention_samples_are_independent(device):
    seed = seeds.SeedDoubleAttention(8, 6, 5).double().to(device)
    layer = ak.DoubleAttention(8, 6, 5).double().to(device)
    layer.load_state_dict(seed.state_dict())
    x = torch.randn(3, 8, 4, 5, dtype=torch.float64, device=device)
    alone = torch.cat([layer(x[i:i + 1]) for i in range(3)])
    assert rel_error(layer(x), alone) <= 1e-12
    seed_alone = torch.cat([seed(x[i:i + 1]) for i in range(3)])
    assert rel_error(seed(x), seed_alone) > 1e-3  # the published softmax over dim 0 mixes the samples


# ---- fixes and edge cases ------------------------------------------------------------------


@pytest.mark.filterwarnings(r"ignore:std\(\)")
def test_sge_single_position_is_finite():
    layer = ak.SGE(2)
    randomise(layer)
    x = torch.randn(2, 4, 1, 1)
    out = layer(x)
    expected = x * torch.sigmoid(layer.bias.view(1, 2, 1, 1)).repeat_interleave(2, dim=1)
    assert rel_error(out, expected) <= 1e-6
    assert torch.isnan(seeds.SeedSGE(2)(x)).all()  # the published normalisation divides by a NaN std


def test_sge_takes_channels_last_and_strided_inputs():
    """SGE's similarity is a batched product over reshaped views of x: inputs whose [B·G, C/G, H·W] view is not
    contiguous (channels-last, a strided slice) give the seed's values and gradients."""
    seed = seeds.SeedSGE(4).double()
    randomise(seed)
    layer = ak.SGE(4).double()
    layer.load_state_dict(seed.state_dict())
    base = torch.randn(2, 16, 6, 14, dtype=torch.float64)
    for view in (lambda t: t.to(memory_format=torch.channels_last), lambda t: t[:, :, :, ::2]):
        x_seed, x_ours = base.clone().requires_grad_(), base.clone().requires_grad_()
        assert not view(x_ours).is_contiguous()
        out_seed, out = seed(view(x_seed)), layer(view(x_ours))
        assert rel_error(out, out_seed) <= 1e-12
        grad = torch.randn_like(out)
        out_seed.backward(grad)
        out.backward(grad)
        assert rel_error(x_ours.grad, x_seed.grad) <= 1e-12


def test_parameter_names_match_the_published_modules():
    assert set(ak.SEAttention(32, 8).state_dict()) == {"fc.0.weight", "fc.2.weight"}
    assert set(ak.CBAM(32).state_dict()) == {"ca.fc1.weight", "ca.fc2.weight", "sa.conv1.weight"}
    assert set(ak.SGE(8).state_dict()) == {"weight", "bias"}
    assert set(ak.scSE(4).state_dict()) == {"cSE.Conv_Squeeze.weight", "cSE.Conv_Excitation.weight", "sSE.conv.weight"}
    assert set(ak.DoubleAttention(4, 3, 2).state_dict()) == {
        f"{m}.{p}" for m in ("convA", "convB", "convV", "conv_reconstruct") for p in ("weight", "bias")}


# ---- torch.compile and autocast ---------------------------------------------------------------

LAYERS = [
    ("DoubleAttention", lambda: ak.DoubleAttention(8, 6, 5), (2, 8, 5, 7)),
    ("SE", lambda: ak.SEAttention(16, 4), (2, 16, 5, 7)),
    ("CBAM", lambda: ak.CBAM(16, 4), (2, 16, 5, 7)),
    ("SKConv", lambda: ak.SKConv(8, M=2, L=4), (2, 8, 5, 7)),
    ("SGE", lambda: ak.SGE(4), (2, 16, 5, 7)),
    ("scSE", lambda: ak.scSE(16), (2, 16, 5, 7)),
    ("SCConv", lambda: ak.SCConv(8, 8), (2, 8, 8, 9)),
    ("SplitAttn", lambda: ak.SplitAttn(16, groups=2, norm_layer=nn.BatchNorm2d), (2, 16, 5, 7)),
]


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_under_torch_compile(name, make, shape):
    """fullgraph tracing (dynamo + AOT autograd through the ops' fake and autograd registrations);
    inductor's code generation is exercised once, on CBAM, the layer with the most gating ops."""
    layer = make().eval()
    randomise(layer)
    if name == "CBAM":
        assert_compiles_like_eager(layer, torch.randn(shape))
        return
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x_eager, x_comp = torch.randn(shape).requires_grad_(), None
    x_comp = x_eager.detach().clone().requires_grad_()
    out_eager, out_comp = layer(x_eager), compiled(x_comp)
    assert rel_error(out_comp, out_eager) <= 1e-6
    out_eager.sum().backward()
    out_comp.sum().backward()
    assert rel_error(x_comp.grad, x_eager.grad) <= 1e-6


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_under_cpu_bfloat16_autocast(name, make, shape):
    layer = make().eval()
    randomise(layer)
    x = torch.randn(shape)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.requires_grad_())
    assert out.shape == expected.shape and torch.isfinite(out).all()
    assert rel_error(out.float(), expected) <= 0.05
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()


# ---- bad arguments and inputs ----------------------------------------------------------------

BAD_ARGUMENTS = [
    (lambda: ak.DoubleAttention(0, 4, 4), "in_channels must be an int >= 1"),
    (lambda: ak.SEAttention(8, 16), r"channel // reduction must be >= 1"),
    (lambda: ak.ChannelAttention(4, 0), "ratio must be an int >= 1"),
    (lambda: ak.SpatialAttention(5), "kernel_size must be 3 or 7"),
    (lambda: ak.CBAM(8, 16), r"in_planes // ratio must be >= 1"),
    (lambda: ak.SKConv(8, G=3), "in_ch must be divisible by G"),
    (lambda: ak.SKConv(8, M=0), "M must be an int >= 1"),
    (lambda: ak.SGE(0), "groups must be an int >= 1"),
    (lambda: ak.scSE(1), "in_ch must be an int >= 2"),
    (lambda: ak.SCConv(8, 16), "planes must equal inplanes"),
    (lambda: ak.SCConv(8, 8, padding=2, dilation=1), "padding must equal dilation"),
    (lambda: ak.SplitAttn(6, radix=4), "divisible by groups \\* radix = 4"),
]


@pytest.mark.parametrize("make,match", BAD_ARGUMENTS)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


BAD_INPUTS = [
    (lambda: ak.DoubleAttention(8, 4, 4), (2, 6, 5, 5), "expected 8 input channels"),
    (lambda: ak.SEAttention(16, 4), (2, 16, 5), r"expected input \[B, C, H, W\]"),
    (lambda: ak.CBAM(16, 4), (2, 8, 5, 5), "expected 16 input channels"),
    (lambda: ak.SGE(4), (2, 6, 5, 5), "divisible by groups=4"),
    (lambda: ak.SCConv(8, 8, pooling_r=4), (2, 8, 3, 9), "at least pooling_r x pooling_r"),
    (lambda: ak.SplitAttn(16), (2, 8, 5, 5), "expected 16 input channels"),
    (lambda: ak.SKConv(8), (2, 4, 5, 5), "expected 8 input channels"),
    (lambda: ak.scSE(8), (2, 4, 5, 5), "expected 8 input channels"),
]


@pytest.mark.parametrize("make,shape,match", BAD_INPUTS)
def test_bad_inputs(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make()(torch.randn(shape))
