"""SwinIR (Liang et al., "SwinIR: Image Restoration Using Swin Transformer", ICCV Workshops 2021) on
attnkern's fused window attention, the official test script's configurations (:func:`task_config`) and
official checkpoint loading (:meth:`SwinIR.from_checkpoint`)."""

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import export
from ...nn.swin import PatchEmbed, PatchUnEmbed, RSTB, Upsample, UpsampleOneStep, _conv_block

__all__ = ["SwinIR", "load_checkpoint", "select_state_dict", "task_config", "TASKS"]

UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")
# Buffers that depend on the training img_size / window only: recomputed by the model, never loaded.
RECOMPUTED_BUFFERS = ("attn_mask", "relative_position_index")
RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _recomputed(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RECOMPUTED_BUFFERS


def _reflect_pad(x: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Reflect-pads x [B, C, H, W] at the bottom and right. Where the pad is not shorter than the side
    (F.pad's reflect limit, where the published code fails), the reflection is repeated."""
    for dim, pad in ((3, pad_w), (2, pad_h)):
        while pad > 0:
            size = x.shape[dim]
            step = min(pad, size - 1) if size > 1 else pad
            mode = "reflect" if size > 1 else "replicate"
            x = F.pad(x, (0, step, 0, 0) if dim == 3 else (0, 0, 0, step), mode)
            pad -= step
    return x


class SwinIR(nn.Module):
    """SwinIR: shallow feature extraction (3×3 conv), deep feature extraction (residual Swin Transformer
    blocks :class:`~attnkern.nn.swin.RSTB`, a norm and a conv, with a long residual), and one of four
    reconstruction heads. A drop-in for the published ``SwinIR``: same constructor, initialisation,
    state_dict keys and outputs; the attention runs on attnkern's fused kernel
    (:func:`attnkern.nn.swin.set_fused_attention(model, False)` runs the published formulation).

    The input is reflect-padded at the bottom/right to a multiple of ``window_size`` and the output
    cropped to (H·upscale, W·upscale), as published. ``self.mean`` (the DIV2K RGB mean for 3 channels,
    else 0) is a non-persistent buffer (it follows ``.to()``; not in the state_dict, as published).

    Args:
        img_size: training patch size (int or pair): sets the blocks' ``attn_mask`` buffers (and the
            absolute position embedding with ``ape``); any input size works.
        patch_size: patch size of the (parameter-free) patch embedding; SwinIR uses 1.
        in_chans: image channels in and out.
        embed_dim: feature channels.
        depths: blocks per RSTB.
        num_heads: attention heads per RSTB.
        window_size: attention window side.
        mlp_ratio: MLP hidden channels / embed_dim.
        qkv_bias, qk_scale: see :class:`~attnkern.nn.swin.WindowAttention`.
        drop_rate, attn_drop_rate: dropout rates.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks.
        norm_layer: normalisation class.
        ape: absolute position embedding (only for inputs of img_size).
        patch_norm: a norm after the patch embedding.
        use_checkpoint: gradient checkpointing per block.
        upscale: 2/3/4/8 for SR, 1 for denoising and JPEG artifact reduction.
        img_range: 1. or 255.: the (mean-subtracted) input is multiplied by it.
        upsampler: 'pixelshuffle' (classical SR), 'pixelshuffledirect' (lightweight SR), 'nearest+conv'
            (real-world SR, ×4 only) or '' (denoising / JPEG: output = input + residual).
        resi_connection: '1conv' or '3conv'.

    Unknown keyword arguments raise ``TypeError`` (the published class ignores them silently).
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 64, patch_size: Union[int, Sequence[int]] = 1,
                 in_chans: int = 3, embed_dim: int = 96, depths: Sequence[int] = (6, 6, 6, 6),
                 num_heads: Sequence[int] = (6, 6, 6, 6), window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, norm_layer: Type[nn.Module] = nn.LayerNorm,
                 ape: bool = False, patch_norm: bool = True, use_checkpoint: bool = False, upscale: int = 2,
                 img_range: float = 1.0, upsampler: str = "", resi_connection: str = "1conv", **kwargs: Any):
        super().__init__()
        if kwargs:
            raise TypeError(f"SwinIR: unexpected arguments {sorted(kwargs)}")
        depths, num_heads = list(depths), list(num_heads)
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"SwinIR: depths and num_heads need one entry per RSTB, got depths={depths}, "
                             f"num_heads={num_heads}")
        for heads in num_heads:
            if heads < 1 or embed_dim % heads:
                raise ValueError(f"SwinIR: embed_dim ({embed_dim}) must be divisible by every num_heads, "
                                 f"got {num_heads}")
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"SwinIR: upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
        if upsampler == "nearest+conv" and upscale != 4:
            raise ValueError(f"SwinIR: upsampler 'nearest+conv' supports upscale 4 only, got {upscale}")
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"SwinIR: window_size must be a positive int, got {window_size!r}")
        num_in_ch = num_out_ch = in_chans
        num_feat = 64
        self.img_range = img_range
        mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.in_chans = in_chans
        self.upscale = upscale
        self.upsampler = upsampler
        self.window_size = window_size

        # shallow features
        self.conv_first = nn.Conv2d(num_in_ch, embed_dim, 3, 1, 1)

        # deep features
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.num_features = embed_dim
        self.mlp_ratio = mlp_ratio
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=embed_dim,
                                      embed_dim=embed_dim, norm_layer=norm_layer if patch_norm else None)
        self.patches_resolution = self.patch_embed.patches_resolution
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=patch_size, in_chans=embed_dim,
                                          embed_dim=embed_dim, norm_layer=norm_layer if patch_norm else None)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(RSTB(dim=embed_dim, input_resolution=tuple(self.patches_resolution), depth=depth,
                                    num_heads=heads, window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                    qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                                    drop_path=rates[start:start + depth], norm_layer=norm_layer, downsample=None,
                                    use_checkpoint=use_checkpoint, img_size=img_size, patch_size=patch_size,
                                    resi_connection=resi_connection))
        self.norm = norm_layer(self.num_features)
        self.conv_after_body = _conv_block(embed_dim, resi_connection, "SwinIR")

        # reconstruction
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
            self.upsample = Upsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = UpsampleOneStep(upscale, embed_dim, num_out_ch, tuple(self.patches_resolution))
        elif upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        else:
            self.conv_last = nn.Conv2d(embed_dim, num_out_ch, 3, 1, 1)

        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The published init: Linear weights truncated normal (std 0.02), biases 0; LayerNorm 1 and 0
        (convolutions keep PyTorch's default)."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def check_image_size(self, x: Tensor) -> Tensor:
        """Reflect-pads x at the bottom/right to multiples of window_size (as published; a pad longer than
        the image repeats the reflection instead of failing). While an exporter traces the sizes, the pad
        is a gather that follows the size (exported programs need sides of at least window_size)."""
        h, w = x.shape[-2:]
        if export.is_traced_size(h, w):
            # sizes traced by an exporter: the pad as gathers that follow the size (needs h, w >= window_size)
            return export.reflect_pad_to_multiple(x, self.window_size)
        return _reflect_pad(x, (-h) % self.window_size, (-w) % self.window_size)

    def forward_features(self, x: Tensor) -> Tensor:
        """Deep features: [B, embed_dim, H, W] → [B, embed_dim, H, W] (the RSTBs and the final norm)."""
        x_size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.ape:
            if x.shape[1] != self.absolute_pos_embed.shape[1]:
                raise ValueError(f"SwinIR: ape=True needs inputs of img_size {self.patch_embed.img_size} "
                                 f"({self.absolute_pos_embed.shape[1]} tokens), got {x_size}")
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x, x_size)
        x = self.norm(x)
        return self.patch_unembed(x, x_size)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, in_chans, H, W] → [B, in_chans, H·upscale, W·upscale]."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_chans:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"SwinIR: expected an image [B, {self.in_chans}, H, W], got {shape}")
        H, W = x.shape[2:]
        x = self.check_image_size(x)
        mean = self.mean.to(x)
        x = (x - mean) * self.img_range
        if self.upsampler == "pixelshuffle":
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        elif self.upsampler == "pixelshuffledirect":
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            x = self.upsample(x)
        elif self.upsampler == "nearest+conv":
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            x = self.conv_before_upsample(x)
            x = self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))
            x = self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
            x = self.conv_last(self.lrelu(self.conv_hr(x)))
        else:
            x_first = self.conv_first(x)
            res = self.conv_after_body(self.forward_features(x_first)) + x_first
            x = x + self.conv_last(res)
        x = x / self.img_range + mean
        if export.is_traced_size(H, W):
            return export.crop(export.crop(x, 2, H * self.upscale), 3, W * self.upscale)
        return x[:, :, :H * self.upscale, :W * self.upscale]

    @classmethod
    def from_checkpoint(cls, path_or_dict: Union[str, "os.PathLike[str]", Mapping[str, Any]],
                        param_key: Optional[str] = None, **config: Any) -> "SwinIR":
        """A SwinIR built with ``config`` (the constructor's arguments) holding an official checkpoint's
        weights, in eval mode (call ``.train()`` to fine-tune).

        Args:
            path_or_dict: a file written by ``torch.save`` (loaded on the CPU with ``weights_only=True``)
                or the loaded dict.
            param_key: the entry holding the weights. Default: ``'params_ema'`` when present, else
                ``'params'``, else the dict itself (a bare state_dict). The released real-world SR
                models store ``params_ema`` and the others ``params`` only, so the default picks what
                the official test script loads; for a BasicSR training checkpoint with both, EMA
                weights (the ones BasicSR evaluates) are preferred — pass ``param_key='params'`` for
                the raw ones.
            **config: SwinIR constructor arguments (the checkpoint does not record them).

        The ``attn_mask`` and ``relative_position_index`` buffers are taken from the model, not the
        file: they depend on the training img_size only, so checkpoints of any img_size load. Every
        other key must match, name and shape, or a ``ValueError`` names the missing, unexpected and
        mis-shaped keys.
        """
        state, _ = select_state_dict(load_checkpoint(path_or_dict), param_key)
        model = cls(**config)
        model.load_official_state_dict(state)
        return model.eval()

    def load_official_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Loads an official state_dict strictly, except the recomputed buffers (``attn_mask``,
        ``relative_position_index``), which are ignored; ``ValueError`` naming the keys on any mismatch."""
        own = {k: v for k, v in self.state_dict().items() if not _recomputed(k)}
        given = {k: v for k, v in state.items() if not _recomputed(k)}
        missing = sorted(set(own) - set(given))
        unexpected = sorted(set(given) - set(own))
        mis_shaped = [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in sorted(set(own) & set(given))
                      if not isinstance(given[k], Tensor) or given[k].shape != own[k].shape]
        if missing or unexpected or mis_shaped:
            def listing(title: str, items: List[str]) -> str:
                shown = items[:12] + ([f"... ({len(items) - 12} more)"] if len(items) > 12 else [])
                return f"\n  {title} ({len(items)}): " + ", ".join(shown) if items else ""
            raise ValueError("SwinIR: the checkpoint does not match this configuration (check embed_dim, depths, "
                             "num_heads, window_size, mlp_ratio, upscale, upsampler, resi_connection, in_chans)"
                             + listing("missing keys", missing) + listing("unexpected keys", unexpected)
                             + listing("shape mismatches", mis_shaped))
        result = self.load_state_dict(given, strict=False)
        assert not result.unexpected_keys and all(_recomputed(k) for k in result.missing_keys)


def load_checkpoint(path_or_dict: Union[str, "os.PathLike[str]", Mapping[str, Any]]) -> Mapping[str, Any]:
    """The checkpoint dict: a Mapping as is, a path through ``torch.load(map_location='cpu', weights_only=True)``."""
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    if isinstance(path_or_dict, (str, os.PathLike)):
        checkpoint = torch.load(path_or_dict, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, Mapping):
            raise ValueError(f"SwinIR: {os.fspath(path_or_dict)!r} holds a {type(checkpoint).__name__}, "
                             "not a state_dict or a dict of state_dicts")
        return checkpoint
    raise TypeError(f"SwinIR: expected a checkpoint path or dict, got {type(path_or_dict).__name__}")


def select_state_dict(checkpoint: Mapping[str, Any], param_key: Optional[str] = None
                      ) -> Tuple[Dict[str, Tensor], Optional[str]]:
    """(state_dict, the key it was under or None for a bare state_dict): ``checkpoint[param_key]`` when
    given, else ``'params_ema'``, else ``'params'``, else the checkpoint itself."""
    if param_key is not None:
        if param_key not in checkpoint or not isinstance(checkpoint[param_key], Mapping):
            raise ValueError(f"SwinIR: the checkpoint has no state_dict under {param_key!r}; its top-level keys: "
                             f"{sorted(checkpoint)[:12]}")
        return dict(checkpoint[param_key]), param_key
    for key in ("params_ema", "params"):
        if isinstance(checkpoint.get(key), Mapping):
            return dict(checkpoint[key]), key
    return dict(checkpoint), None

TASKS = ("classical_sr", "lightweight_sr", "real_sr", "denoise", "jpeg")


def task_config(task: str, scale: Optional[int] = None, large: bool = False, in_chans: int = 3) -> Dict[str, Any]:
    """SwinIR's constructor arguments for a task, as the official test script (main_test_swinir.py)
    builds its models.

    Args:
        task: one of :data:`TASKS`.
        scale: upscale factor: required for classical_sr (2, 3, 4, 8) and lightweight_sr (2, 3, 4);
            real_sr is ×4; denoise and jpeg are ×1 (another value is a ``ValueError``).
        large: real_sr's large model (embed_dim 240, depths [6]*9, heads [8]*9, '3conv').
        in_chans: image channels (1 for the grayscale denoising / JPEG models).
    """
    common: Dict[str, Any] = dict(in_chans=in_chans, img_range=1.0, mlp_ratio=2, resi_connection="1conv",
                                  embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, window_size=8)
    fixed = {"real_sr": 4, "denoise": 1, "jpeg": 1}
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    if task in fixed:
        if scale not in (None, fixed[task]):
            raise ValueError(f"task {task} is ×{fixed[task]} only, got --scale {scale}")
        scale = fixed[task]
    elif scale is None or scale < 1:
        raise ValueError(f"task {task} needs --scale (2, 3, 4 or 8), got {scale}")
    if task == "classical_sr":
        return dict(common, upscale=scale, img_size=64, upsampler="pixelshuffle")
    if task == "lightweight_sr":
        return dict(common, upscale=scale, img_size=64, embed_dim=60, depths=[6] * 4, num_heads=[6] * 4,
                    upsampler="pixelshuffledirect")
    if task == "real_sr":
        config = dict(common, upscale=4, img_size=64, upsampler="nearest+conv")
        if large:
            config.update(embed_dim=240, depths=[6] * 9, num_heads=[8] * 9, resi_connection="3conv")
        return config
    if task == "denoise":
        return dict(common, upscale=1, img_size=128, upsampler="")
    return dict(common, upscale=1, img_size=126, window_size=7, img_range=255.0, upsampler="")
