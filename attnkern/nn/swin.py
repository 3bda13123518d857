"""Swin Transformer layers as SwinIR uses them, on attnkern's fused shifted-window attention.

Drop-ins for SwinIR's ``Mlp``, ``WindowAttention``, ``SwinTransformerBlock``, ``BasicLayer``, ``RSTB``,
``PatchEmbed``, ``PatchUnEmbed``, ``Upsample`` and ``UpsampleOneStep``: same constructor arguments,
parameter and buffer names, initialisation and outputs, so SwinIR's state_dicts load.

The blocks run on the image layout: norm1, then :meth:`WindowAttention.forward_image` — the qkv Linear
on the image → :func:`attnkern.ops.window_attention` (cyclic shift, window partition and region mask
inside the kernel) → ``proj`` — with none of the roll / partition / reverse copies of the published
code. The published formulation (roll → partition → attention on the windows → reverse → roll back)
is kept as the *reference path*: :func:`set_fused_attention` switches every block under a module to
it, e.g. to compare the two with the same weights. The window geometry (partition, bias index, shift
mask) is :mod:`attnkern._window_geometry`'s.
"""

import math
from typing import Callable, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from .. import export
from .._window_geometry import relative_position_index, shift_region_mask, window_partition, window_reverse
from ..ops.window_attention import window_attention

__all__ = [
    "DropPath", "drop_path", "Mlp", "WindowAttention", "SwinTransformerBlock", "BasicLayer", "RSTB",
    "PatchEmbed", "PatchUnEmbed", "Upsample", "UpsampleOneStep", "set_fused_attention",
]

WindowSize = Union[int, Sequence[int]]


def _pair(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``7`` → ``(7, 7)``; a pair stays a pair (as timm's ``to_2tuple``)."""
    if isinstance(value, int):
        return value, value
    first, second = tuple(value)
    return int(first), int(second)


def _square_window(window_size: WindowSize, who: str) -> int:
    """The side of a square window given as an int or a pair (Wh, Ww) with Wh == Ww."""
    if isinstance(window_size, int):
        side = window_size
    else:
        try:
            wh, ww = tuple(window_size)
        except (TypeError, ValueError):
            raise ValueError(f"{who}: window_size must be an int or a pair (Wh, Ww), got {window_size!r}") from None
        if wh != ww:
            raise ValueError(f"{who}: only square windows are supported (the fused kernel's windows are "
                             f"ws × ws), got window_size {tuple(window_size)}")
        side = int(wh)
    if side < 1:
        raise ValueError(f"{who}: window_size must be >= 1, got {window_size!r}")
    return side


def _check_tokens(x: Tensor, x_size: Sequence[int], dim: int, who: str) -> Tuple[int, int, int, int, int]:
    """Checks x [B, L, C] against x_size (H, W) and the layer's dim; returns B, L, C, H, W."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{who}: expected tokens x [B, L, C], got shape {tuple(x.shape)}")
    try:
        H, W = x_size
    except (TypeError, ValueError):
        raise ValueError(f"{who}: x_size must be a pair (H, W), got {x_size!r}") from None
    B, L, C = x.shape
    if not all(isinstance(s, int) for s in (L, H, W)):
        # traced sizes (torch.jit.trace: tensors; torch.export: SymInts): kept as they are, so that the
        # program follows the input size; int() would freeze them
        return B, L, C, H, W
    try:
        H, W = int(H), int(W)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: x_size must be a pair (H, W), got {x_size!r}") from None
    if L != H * W:
        raise ValueError(f"{who}: x has L = {L} tokens but x_size = ({H}, {W}) needs H·W = {H * W}")
    if C != dim:
        raise ValueError(f"{who}: x has C = {C} channels, the layer was built for dim = {dim}")
    return B, L, C, H, W


# ---- stochastic depth ------------------------------------------------------------------------------

def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Stochastic depth (Huang et al. 2016): in training, each sample's residual branch is zeroed with
    probability ``drop_prob`` and the kept ones are scaled by 1 / (1 − drop_prob), so the expectation
    is x. The identity in evaluation or when ``drop_prob`` is 0."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    kept = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * kept / keep


class DropPath(nn.Module):
    """Stochastic depth per sample on a residual branch (see :func:`drop_path`)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


# ---- MLP and window attention ----------------------------------------------------------------------

class Mlp(nn.Module):
    """The transformer MLP: fc1 → act → dropout → fc2 → dropout (SwinIR's ``Mlp``).

    Args:
        in_features: input channels.
        hidden_features: hidden channels (default: in_features).
        out_features: output channels (default: in_features).
        act_layer: activation class (default ``nn.GELU``).
        drop: dropout rate after the activation and after fc2.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 act_layer: Type[nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _pad_to_windows(image: Tensor, window_size: int) -> Tensor:
    """image [B, H, W, C] zero-padded at the bottom/right to multiples of the window (the original Swin
    Transformer's padding). Traced sizes (export) take the padding as gathers, the same program whether
    the pad is empty or not."""
    H, W = image.shape[1:3]
    if export.is_traced_size(H, W):
        return export.zero_pad_to_multiple(export.zero_pad_to_multiple(image, 1, window_size), 2, window_size)
    pad_h, pad_w = (-H) % window_size, (-W) % window_size
    return F.pad(image, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else image


def _crop(out: Tensor, H, W) -> Tensor:
    """out [B, Hp, Wp, …] cropped to [B, H, W, …] (a gather for traced sizes)."""
    if export.is_traced_size(H, W):
        return export.crop(export.crop(out, 1, H), 2, W)
    return out[:, :H, :W] if tuple(out.shape[1:3]) != (H, W) else out


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias (Liu et al., "Swin Transformer",
    ICCV 2021; SwinIR), a drop-in for SwinIR's ``WindowAttention``. Per window and head:
    softmax(scale·q·kᵀ + B + mask)·v, then ``proj``.

    Two entries, both on attnkern's kernel (:func:`attnkern.ops.window_attention`):

    - ``forward(x, mask)``, the published one: partitioned windows x [B_, N, C] (B_ = batch · nW,
      N = Wh·Ww) and an optional additive mask [nW, N, N] (windows numbered as the partition numbers
      them). The qkv Linear's output [B_, N, 3C] is viewed as a tall image [B_/nW, nW·Wh, Ww, 3, heads, d]
      whose windows are exactly the nW windows in order (no copy, no N×N attention kept for the backward).
    - :meth:`forward_image` ``(x, shift_size)``, the attention branch of a Swin block on an image
      [B, H, W, C]: the qkv Linear on the image, the kernel with the cyclic shift and SwinIR's region
      mask computed inside it, ``proj`` — none of the roll / partition / reverse copies of the published
      block. :class:`SwinTransformerBlock` runs it.

    :meth:`uses_kernel` decides for both: with ``fused = False`` (see :func:`set_fused_attention`), and in
    training when ``attn_drop > 0`` (the kernel has no attention dropout), the published formulation runs
    instead; while exporting portably, a standard-op formulation (:mod:`attnkern.export`).

    Parameter and buffer names match SwinIR (``relative_position_bias_table``
    [(2·Wh−1)·(2·Ww−1), heads], ``relative_position_index`` [N, N], ``qkv``, ``proj``). Only square
    windows are supported: ``window_size`` is an int or a pair (ws, ws); ``self.window_size`` is the
    pair, as published. timm's ``WindowAttention`` does not save ``relative_position_index`` (a
    non-persistent buffer there): a state_dict without it loads, also with ``strict=True``, the index
    being the one this layer computed (it depends on the window size only).

    Exports (ONNX, portable TorchScript / ``torch.export``, see :mod:`attnkern.export`): ``forward`` as the
    published formulation, ``forward_image`` at any H, W (padding, shift mask and crop follow the
    traced size).

    Args:
        dim: channels C; a multiple of num_heads.
        window_size: side of the window (int) or (Wh, Ww) with Wh == Ww.
        num_heads: attention heads.
        qkv_bias: learnable bias in the qkv Linear.
        qk_scale: overrides the default scale head_dim^-0.5 (a falsy value keeps the default, as published).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, window_size: WindowSize, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        side = _square_window(window_size, "WindowAttention")
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"WindowAttention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.window_size = (side, side)
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.fused = True

        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * side - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(side))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)

    def relative_position_bias(self) -> Tensor:
        """[heads, N, N]: the bias table gathered by ``relative_position_index`` (differentiable)."""
        N = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        return bias.permute(2, 0, 1).contiguous()

    def _drops_attention(self) -> bool:
        """Whether attention dropout is active (training with ``attn_drop > 0``): only the published
        formulation has it."""
        return self.training and self.attn_drop.p > 0

    def uses_kernel(self) -> bool:
        """Whether ``forward`` and ``forward_image`` run the kernel: ``fused``, not exporting portably
        (:func:`attnkern.export.is_portable`) and no active attention dropout."""
        return self.fused and not self._drops_attention() and not export.is_portable()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # timm keeps relative_position_index out of its state_dicts: take the one computed here.
        key = prefix + "relative_position_index"
        if key not in state_dict and prefix + "relative_position_bias_table" in state_dict:
            state_dict[key] = self.relative_position_index
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def attend_windows(self, qkv: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The published attention on windows: qkv [B_, N, 3C] (the qkv Linear's output) → [B_, N, C],
        before ``proj``: softmax(scale·q·kᵀ + bias + mask), attention dropout, ·v."""
        B_, N, _ = qkv.shape
        heads, C = self.num_heads, self.dim
        q, k, v = qkv.reshape(B_, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias().to(attn.dtype).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, heads, N, N) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(B_, heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        return (attn @ v).transpose(1, 2).reshape(B_, N, C)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """x [B_, N, C] windows → [B_, N, C]; mask [nW, N, N] (additive) or None."""
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"WindowAttention: expected windows x [B_, N, C], got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        ws = self.window_size[0]
        B_, N, C = x.shape
        if N != ws * ws or C != self.dim:
            raise ValueError(f"WindowAttention: expected x [B_, N, C] with N = {ws * ws} (window {ws}×{ws}) and "
                             f"C = {self.dim}, got shape {tuple(x.shape)}")
        if mask is not None:
            if mask.dim() != 3 or tuple(mask.shape[1:]) != (N, N) or mask.shape[0] < 1 or B_ % mask.shape[0]:
                raise ValueError(f"WindowAttention: mask must be [nW, N, N] = [nW, {N}, {N}] with nW dividing "
                                 f"B_ = {B_}, got {tuple(mask.shape)}")
        qkv = self.qkv(x)
        if self.uses_kernel():
            heads = self.num_heads
            bias = self.relative_position_bias().to(qkv.dtype)
            if mask is None:
                qkv = qkv.view(B_, ws, ws, 3, heads, C // heads)
            else:
                # A tall image of width ws: its windows, row-major, are the nW windows of each sample.
                nW = mask.shape[0]
                qkv = qkv.view(B_ // nW, nW * ws, ws, 3, heads, C // heads)
            out = window_attention(qkv, bias, ws, 0, mask, self.scale).reshape(B_, N, C)
        else:
            out = self.attend_windows(qkv, mask)
        return self.proj_drop(self.proj(out))

    def forward_image(self, x: Tensor, shift_size: int = 0) -> Tensor:
        """The attention branch of a Swin block on an image: x [B, H, W, C] → [B, H, W, C], windows
        cyclically shifted by ``shift_size`` (SW-MSA, with SwinIR's region mask; 0 ≤ shift_size < window).

        Any H, W: when one is not a multiple of the window, x is padded with zeros at the bottom/right
        to the next multiple (as the original Swin Transformer does), attention runs on the padded image
        (region mask of the padded size; padded tokens are keys and values like any other), and the
        output is cropped back. The kernel (:meth:`uses_kernel`) and the portable formulation run qkv
        → attention → crop → ``proj`` on the image; the published one pads, rolls, partitions, runs
        :meth:`forward` on the windows, reverses, rolls back and crops.
        """
        ws, heads = self.window_size[0], self.num_heads
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"WindowAttention: expected an image x [B, H, W, C], got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        B, H, W, C = x.shape
        if not export.is_traced_size(C) and C != self.dim:
            raise ValueError(f"WindowAttention: x has C = {C} channels, the layer was built for dim = {self.dim}")
        if not 0 <= shift_size < ws:
            raise ValueError(f"WindowAttention: shift_size must be in [0, window_size) = [0, {ws}), got {shift_size}")
        kernel = self.uses_kernel()
        if not kernel and (self._drops_attention() or not export.is_portable()):
            return self._forward_image_published(x, shift_size)
        image = _pad_to_windows(x, ws)
        qkv = self.qkv(image).view(B, image.shape[1], image.shape[2], 3, heads, C // heads)
        bias = self.relative_position_bias().to(qkv.dtype)
        if kernel:
            out = window_attention(qkv, bias, ws, shift_size, None, self.scale)
        else:
            out = export.window_attention(qkv, bias, ws, shift_size, self.scale)
        # proj on contiguous tokens [B, H·W, C], as the published block applies it
        out = self.proj_drop(self.proj(_crop(out, H, W).reshape(B, H * W, C)))
        return out.view(B, H, W, C)

    def _forward_image_published(self, x: Tensor, shift_size: int) -> Tensor:
        """:meth:`forward_image` as SwinIR's block computes it: roll → partition → attention on the
        windows → reverse → roll back (after the padding, before the crop)."""
        B, H, W, C = x.shape
        ws = self.window_size[0]
        x = _pad_to_windows(x, ws)
        Hp, Wp = x.shape[1:3]
        if shift_size:
            x = torch.roll(x, shifts=(-shift_size, -shift_size), dims=(1, 2))
        mask = shift_region_mask(Hp, Wp, ws, shift_size, x.device) if shift_size else None
        windows = window_partition(x, ws)  # [B·nW, N, C]
        windows = self.proj_drop(self.proj(self.attend_windows(self.qkv(windows), mask)))
        x = window_reverse(windows, ws, Hp, Wp)
        if shift_size:
            x = torch.roll(x, shifts=(shift_size, shift_size), dims=(1, 2))
        return _crop(x, H, W)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, fused={self.fused}"


# ---- the Swin Transformer block --------------------------------------------------------------------

class SwinTransformerBlock(nn.Module):
    """A Swin Transformer layer (W-MSA or SW-MSA, then an MLP, each with a pre-norm residual), a drop-in
    for SwinIR's ``SwinTransformerBlock``:

        x = x + drop_path(attn.forward_image(norm1(x), shift))   # qkv → window attention → proj
        x = x + drop_path(mlp(norm2(x)))

    ``forward(x, x_size)`` takes tokens x [B, H·W, C] of an H×W image and runs the attention branch on
    it as an image (:meth:`WindowAttention.forward_image`): by default the qkv Linear, then
    :func:`attnkern.ops.window_attention` with the shift — the cyclic shift and SwinIR's −100 region
    mask are computed inside the kernel — then ``proj``: no roll, partition or reverse copies. With
    ``fused = False`` (see :func:`set_fused_attention`), or in training with ``attn_drop > 0`` (the
    kernel has no attention dropout), the published one: roll → window partition → attention on the
    windows → reverse → roll back.

    Published rule kept: if min(input_resolution) <= window_size, the window becomes
    min(input_resolution) and the shift 0. The ``attn_mask`` buffer ([nW, N, N] for input_resolution,
    shifted blocks only, as published) is kept so state_dicts match; the attention computes its mask
    from the image size and does not read it.

    Any x_size works (the published block needs multiples of the window): when H or W is not a
    multiple of the window, the normalised tokens are padded with zeros at the bottom/right to the
    next multiple and the output cropped back (see :meth:`WindowAttention.forward_image`). SwinIR
    itself pads the image (reflect) to a multiple of the window, so its blocks never pad.

    Exports (ONNX, portable TorchScript / ``torch.export``, see :mod:`attnkern.export`) at any H, W: the
    padding, the shift mask and the crop follow the traced size.

    Args:
        dim: channels C.
        input_resolution: (H, W) the block is built for (sets ``attn_mask``).
        num_heads: attention heads (dim must be divisible by it).
        window_size: side of the (square) window.
        shift_size: shift of SW-MSA, 0 ≤ shift_size < window_size.
        mlp_ratio: MLP hidden channels / dim.
        qkv_bias, qk_scale, attn_drop: see :class:`WindowAttention`.
        drop: dropout after the attention projection and in the MLP.
        drop_path: stochastic depth rate of both residual branches.
        act_layer: MLP activation class.
        norm_layer: normalisation class (called with dim).
    """

    def __init__(self, dim: int, input_resolution: Sequence[int], num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer: Type[nn.Module] = nn.GELU, norm_layer: Type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = _pair(input_resolution)
        self.num_heads = num_heads
        self.window_size = _square_window(window_size, "SwinTransformerBlock")
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        if min(self.input_resolution) < 1:
            raise ValueError(f"SwinTransformerBlock: input_resolution must be positive, got {input_resolution!r}")
        if min(self.input_resolution) <= self.window_size:
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f"SwinTransformerBlock: shift_size must be in [0, window_size) = "
                             f"[0, {self.window_size}), got {shift_size}")

        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size=self.window_size, num_heads=num_heads, qkv_bias=qkv_bias,
                                    qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        attn_mask = self.calculate_mask(self.input_resolution) if self.shift_size > 0 else None
        self.register_buffer("attn_mask", attn_mask)

    @property
    def fused(self) -> bool:
        """Whether the attention may run attnkern's kernel: ``attn.fused`` (see :func:`set_fused_attention`)."""
        return self.attn.fused

    @fused.setter
    def fused(self, enabled: bool) -> None:
        self.attn.fused = enabled

    def uses_kernel(self) -> bool:
        """Whether forward runs the kernel: :meth:`WindowAttention.uses_kernel` of ``attn``."""
        return self.attn.uses_kernel()

    def padded_size(self, x_size: Sequence[int]) -> Tuple[int, int]:
        """(H, W) rounded up to multiples of the window."""
        ws = self.window_size
        return tuple(-(-int(s) // ws) * ws for s in x_size)  # type: ignore[return-value]

    def calculate_mask(self, x_size: Sequence[int]) -> Tensor:
        """SwinIR's shifted-window mask [nW, N, N] (0 within a region, −100 across) for an image of
        x_size, float32 on the CPU; a size that is not a multiple of the window is padded first."""
        H, W = self.padded_size(x_size)
        return shift_region_mask(H, W, self.window_size, self.shift_size)

    def forward(self, x: Tensor, x_size: Sequence[int]) -> Tensor:
        """x [B, H·W, C] tokens of an H×W image, x_size = (H, W) → [B, H·W, C]."""
        B, _, C, H, W = _check_tokens(x, x_size, self.dim, "SwinTransformerBlock")
        attended = self.attn.forward_image(self.norm1(x).view(B, H, W, C), self.shift_size)
        x = x + self.drop_path(attended.reshape(B, H * W, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}, "
                f"fused={self.fused}")


def set_fused_attention(module: nn.Module, enabled: bool) -> nn.Module:
    """Sets ``fused`` on every :class:`WindowAttention` under module (itself included), and so on every
    :class:`SwinTransformerBlock`: True runs the fused kernel, False the published roll → partition →
    attention → reverse → roll formulation, with the same weights. Returns module."""
    for m in module.modules():
        if isinstance(m, WindowAttention):
            m.fused = bool(enabled)
    return module


# ---- layers of blocks ------------------------------------------------------------------------------

class BasicLayer(nn.Module):
    """``depth`` Swin Transformer blocks, alternating W-MSA (even blocks) and SW-MSA with shift
    window_size // 2 (odd blocks), then an optional downsample (SwinIR's ``BasicLayer``).

    Args:
        dim, input_resolution, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop,
            norm_layer: see :class:`SwinTransformerBlock`.
        depth: number of blocks.
        drop_path: one rate for every block, or a list/tuple of one rate per block.
        downsample: a class called as ``downsample(input_resolution, dim=dim, norm_layer=norm_layer)``, or None.
        use_checkpoint: recompute each block in the backward (``torch.utils.checkpoint``) to save memory.
    """

    def __init__(self, dim: int, input_resolution: Sequence[int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: Union[float, Sequence[float]] = 0.0,
                 norm_layer: Type[nn.Module] = nn.LayerNorm, downsample: Optional[Callable[..., nn.Module]] = None,
                 use_checkpoint: bool = False):
        super().__init__()
        if isinstance(drop_path, (list, tuple)) and len(drop_path) != depth:
            raise ValueError(f"BasicLayer: drop_path has {len(drop_path)} rates for depth {depth}")
        self.dim = dim
        self.input_resolution = _pair(input_resolution)
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim=dim, input_resolution=input_resolution, num_heads=num_heads,
                                 window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                                 attn_drop=attn_drop,
                                 drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                                 norm_layer=norm_layer)
            for i in range(depth)])
        self.downsample = downsample(input_resolution, dim=dim, norm_layer=norm_layer) if downsample is not None \
            else None

    def forward(self, x: Tensor, x_size: Sequence[int]) -> Tensor:
        """x [B, H·W, C], x_size (H, W) → [B, H·W, C] (or the downsample's output)."""
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, x_size, use_reentrant=False)
            else:
                x = blk(x, x_size)
        if self.downsample is not None:
            x = self.downsample(x)
        return x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, input_resolution={self.input_resolution}, depth={self.depth}"


def _conv_block(dim: int, resi_connection: str, who: str) -> nn.Module:
    """SwinIR's convolution at the end of a residual group: '1conv' (3×3) or '3conv' (3×3 to dim/4,
    LeakyReLU, 1×1, LeakyReLU, 3×3 back to dim)."""
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise ValueError(f"{who}: resi_connection must be '1conv' or '3conv', got {resi_connection!r}")


def _set_patch_geometry(module: nn.Module, img_size, patch_size, in_chans: int, embed_dim: int) -> None:
    """The attributes SwinIR's PatchEmbed and PatchUnEmbed both carry."""
    module.img_size, module.patch_size = _pair(img_size), _pair(patch_size)
    module.patches_resolution = [module.img_size[0] // module.patch_size[0], module.img_size[1] // module.patch_size[1]]
    module.num_patches = module.patches_resolution[0] * module.patches_resolution[1]
    module.in_chans, module.embed_dim = in_chans, embed_dim


class PatchEmbed(nn.Module):
    """Image [B, C, H, W] → tokens [B, H·W, C], then an optional norm (SwinIR's ``PatchEmbed``: with
    patch_size 1, as SwinIR uses it, no projection; ``img_size``/``patch_size`` only set
    ``patches_resolution`` and ``num_patches``).

    Args:
        img_size: training image size (int or pair).
        patch_size: patch size (int or pair).
        in_chans: input channels (recorded only).
        embed_dim: channels C.
        norm_layer: normalisation class (called with embed_dim), or None.
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: Union[int, Sequence[int]] = 4,
                 in_chans: int = 3, embed_dim: int = 96, norm_layer: Optional[Type[nn.Module]] = None):
        super().__init__()
        _set_patch_geometry(self, img_size, patch_size, in_chans, embed_dim)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"PatchEmbed: expected an image [B, C, H, W], got shape {tuple(x.shape)}")
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


class PatchUnEmbed(nn.Module):
    """Tokens [B, H·W, C] → image [B, C, H, W] (SwinIR's ``PatchUnEmbed``; a view of contiguous tokens).

    Args: as :class:`PatchEmbed` (``norm_layer`` unused, as published).
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: Union[int, Sequence[int]] = 4,
                 in_chans: int = 3, embed_dim: int = 96, norm_layer: Optional[Type[nn.Module]] = None):
        super().__init__()
        _set_patch_geometry(self, img_size, patch_size, in_chans, embed_dim)

    def forward(self, x: Tensor, x_size: Sequence[int]) -> Tensor:
        B, _, C, H, W = _check_tokens(x, x_size, self.embed_dim, "PatchUnEmbed")
        if export.is_traced_size(H, W):
            # a contiguous image, as the convolution after it writes: an exporter then never compares
            # the two layouts' strides (which depend on the traced size) in the residual addition
            return x.transpose(1, 2).contiguous().view(B, C, H, W)
        return x.transpose(1, 2).reshape(B, C, H, W)


class RSTB(nn.Module):
    """Residual Swin Transformer block (SwinIR's ``RSTB``): a :class:`BasicLayer`, back to an image,
    a convolution ('1conv' or '3conv'), back to tokens, plus the input:

        RSTB(x) = embed(conv(unembed(residual_group(x)))) + x

    Args:
        dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop,
            attn_drop, drop_path, norm_layer, downsample, use_checkpoint: see :class:`BasicLayer`.
        img_size, patch_size: for the (parameter-free) patch embed/unembed.
        resi_connection: '1conv' or '3conv'.
    """

    def __init__(self, dim: int, input_resolution: Sequence[int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: Union[float, Sequence[float]] = 0.0,
                 norm_layer: Type[nn.Module] = nn.LayerNorm, downsample: Optional[Callable[..., nn.Module]] = None,
                 use_checkpoint: bool = False, img_size: Union[int, Sequence[int]] = 224,
                 patch_size: Union[int, Sequence[int]] = 4, resi_connection: str = "1conv"):
        super().__init__()
        self.dim = dim
        self.input_resolution = _pair(input_resolution)
        self.residual_group = BasicLayer(dim=dim, input_resolution=input_resolution, depth=depth,
                                         num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio,
                                         qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                                         drop_path=drop_path, norm_layer=norm_layer, downsample=downsample,
                                         use_checkpoint=use_checkpoint)
        self.conv = _conv_block(dim, resi_connection, "RSTB")
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=0, embed_dim=dim,
                                      norm_layer=None)
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=patch_size, in_chans=0, embed_dim=dim,
                                          norm_layer=None)

    def forward(self, x: Tensor, x_size: Sequence[int]) -> Tensor:
        """x [B, H·W, C], x_size (H, W) → [B, H·W, C]."""
        _check_tokens(x, x_size, self.dim, "RSTB")
        return self.patch_embed(self.conv(self.patch_unembed(self.residual_group(x, x_size), x_size))) + x


# ---- upsamplers ------------------------------------------------------------------------------------

class Upsample(nn.Sequential):
    """(3×3 conv to 4·num_feat, PixelShuffle(2)) × log2(scale) for scale 2^n, or (3×3 conv to 9·num_feat,
    PixelShuffle(3)) for scale 3 (SwinIR's ``Upsample``; modules ``0``, ``1``, … as published).

    Args:
        scale: 2^n (n ≥ 0) or 3.
        num_feat: channels in and out.
    """

    def __init__(self, scale: int, num_feat: int):
        layers: List[nn.Module] = []
        if scale >= 1 and (scale & (scale - 1)) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"Upsample: scale {scale} is not supported; supported scales are 2^n and 3")
        super().__init__(*layers)


class UpsampleOneStep(nn.Sequential):
    """One 3×3 conv to scale²·num_out_ch channels and PixelShuffle(scale): upsampling and the output
    projection at once (SwinIR's ``UpsampleOneStep``, for lightweight SR).

    Args:
        scale: upscale factor.
        num_feat: input channels.
        num_out_ch: output channels.
        input_resolution: recorded only (as published).
    """

    def __init__(self, scale: int, num_feat: int, num_out_ch: int, input_resolution: Optional[Sequence[int]] = None):
        if scale < 1:
            raise ValueError(f"UpsampleOneStep: scale must be >= 1, got {scale}")
        super().__init__(nn.Conv2d(num_feat, (scale ** 2) * num_out_ch, 3, 1, 1), nn.PixelShuffle(scale))
        self.num_feat = num_feat
        self.input_resolution = input_resolution
