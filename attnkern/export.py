"""Export and deployment: the *portable* (standard-op) formulation of attnkern's layers.

attnkern's layers run its own kernels (``torch.ops.attnkern.*``). A model exported with them — a
TorchScript file, a ``torch.export`` program — holds those ops and runs only where attnkern is
imported. While *portable* mode is on, every layer and op computes the same values with standard
PyTorch operations only, written so that they trace at any batch and image size (no Python branch
or integer conversion on a size): the exported file then runs without attnkern, and an ONNX file
holds standard ONNX operators only (ONNX Runtime, TensorRT, OpenVINO run it).

Portable mode is on

- during ``torch.onnx.export`` (both exporters, ``dynamo=False`` and ``dynamo=True``): ONNX export
  needs nothing from the user;
- inside ``with attnkern.export.portable():`` — for TorchScript (``torch.jit.trace``, Ultralytics'
  ``format="torchscript"``) and ``torch.export`` programs that must run without attnkern;
- in a process started with the environment variable ``ATTNKERN_PORTABLE=1`` (read at import), e.g.
  for ``yolo export format=torchscript``.

Outside it (the default) ``torch.export`` and ``torch.jit.trace`` record attnkern's ops: the program
runs with the kernels wherever ``import attnkern`` comes before loading it.

The formulations here are the published ones where those export (window attention: roll, partition,
softmax) and otherwise written for it: criss-cross attention as CCNet's row and column products,
DRConv as its every-region convolution written as k·k shifted products (no per-sample grouped
convolution, so the batch stays dynamic), DRConv's guide pooling (``AdaptiveAvgPool2d``) as two small
pooling matrices built from the input size, SOCA's centre crop and the windows' padding and cropping
as gathers. They are tested against the kernels (``tests/test_export.py``).
"""

import contextlib
import os
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference
from ._window_geometry import SHIFT_MASK_VALUE, shift_regions

__all__ = [
    "portable", "is_portable", "adaptive_avg_pool2d", "center_crop", "criss_cross_attention",
    "dynamic_region_conv", "window_attention", "reflect_pad_to_multiple", "zero_pad_to_multiple", "crop",
    "round_up", "is_traced_size",
]

_ENV_PORTABLE = os.environ.get("ATTNKERN_PORTABLE", "0").strip().lower() in ("1", "true", "yes", "on")
_modes: List[bool] = []  # the portable() blocks entered, innermost last


@contextlib.contextmanager
def portable(enabled: bool = True) -> Iterator[None]:
    """Within the block, attnkern's layers and ops use their standard-op formulation (``enabled=True``)
    or their kernels (``enabled=False``, e.g. to override ``ATTNKERN_PORTABLE`` for one export; ONNX
    export is portable whatever the mode). Blocks nest, the innermost one deciding; the mode is
    process-wide, not per thread (meant around an export call).

    Example::

        with attnkern.export.portable():
            traced = torch.jit.trace(model.eval(), example)      # runs without attnkern
            program = torch.export.export(model.eval(), (example,))
    """
    _modes.append(bool(enabled))
    try:
        yield
    finally:
        _modes.pop()


def is_portable() -> bool:
    """Whether the standard-op formulation runs now: during ``torch.onnx.export``, else as the innermost
    :func:`portable` block says, else with ``ATTNKERN_PORTABLE=1``. (Under ``torch.compile``, ONNX
    export aside, the same rule: compiled code keeps the kernels by default.)"""
    if torch.onnx.is_in_onnx_export():
        return True
    if _modes:
        return _modes[-1]
    return _ENV_PORTABLE


# ---- sizes that trace ------------------------------------------------------------------------------
# While torch.jit.trace runs, a tensor's sizes are traced 0-dim tensors; under torch.export they are
# SymInts; in eager they are ints. The helpers below use arithmetic only (no int(), no comparisons
# turned into Python bools), so the recorded program follows the input size.

Size = Union[int, Tensor, "torch.SymInt"]


def is_traced_size(*sizes) -> bool:
    """Whether any size is traced (not a plain int): torch.jit.trace or torch.export is recording."""
    return not all(isinstance(s, int) for s in sizes)


def round_up(size: Size, multiple: int) -> Size:
    """size rounded up to a multiple of ``multiple`` (traceable)."""
    return (size + multiple - 1) // multiple * multiple


def crop(x: Tensor, dim: int, length: Size) -> Tensor:
    """The first ``length`` entries of x along ``dim``, as a gather (no slice whose bounds the exporter
    would have to compare with the size)."""
    return x.index_select(dim, torch.arange(length, device=x.device))


def zero_pad_to_multiple(x: Tensor, dim: int, multiple: int) -> Tensor:
    """x zero-padded at the end of ``dim`` to a multiple of ``multiple`` (traceable: a gather of the
    last entry, then zeros where the index is past the end — the same program whether the pad is
    empty or not)."""
    length = x.shape[dim]
    index = torch.arange(round_up(length, multiple), device=x.device)
    shape = [1] * x.dim()
    shape[dim] = -1
    padded = x.index_select(dim, torch.clamp(index, max=length - 1))
    return torch.where((index < length).view(shape), padded, torch.zeros((), dtype=x.dtype, device=x.device))


def reflect_pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pads x [..., H, W] at the bottom/right to multiples of ``multiple`` (SwinIR's
    ``check_image_size``), as gathers: position H + i reads H − 2 − i. Needs each padded side longer than
    its pad (H, W ≥ multiple always suffice)."""
    for dim in (x.dim() - 2, x.dim() - 1):
        length = x.shape[dim]
        index = torch.arange(round_up(length, multiple), device=x.device)
        x = x.index_select(dim, torch.where(index < length, index, 2 * (length - 1) - index))
    return x


# ---- SOCA ------------------------------------------------------------------------------------------

def _crop_bounds(length: Size, crop: int) -> Tuple[Size, Size]:
    """(start, length) of SOCA's central crop of a side: max(length − crop, 0) // 2 and min(length, crop),
    in the arithmetic of the size's kind (SymInt under torch.export, a traced tensor under
    torch.jit.trace), so that no Python comparison freezes it."""
    if isinstance(length, Tensor):
        return torch.clamp(length - crop, min=0) // 2, torch.clamp(length, max=crop)
    if isinstance(length, torch.SymInt):
        return torch.sym_max(length - crop, 0) // 2, torch.sym_min(length, crop)
    return max(length - crop, 0) // 2, min(length, crop)


def center_crop(x: Tensor, crop: int) -> Tensor:
    """The central crop × crop window of x [..., H, W] (each side cropped only when longer), as SOCA
    crops, taken with gathers whose indices follow the traced size (an exported program crops what it
    is given, over 1000 pixels too)."""
    for dim in (x.dim() - 2, x.dim() - 1):
        start, length = _crop_bounds(x.shape[dim], crop)
        x = x.index_select(dim, torch.arange(length, device=x.device) + start)
    return x


# ---- criss-cross attention ------------------------------------------------------------------------

def criss_cross_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Criss-cross attention (CCNet) as row and column products: each pixel's energies over its row
    [B, H, W, W] and its column [B, W, H, H] (the pixel itself masked with −inf there: counted once),
    one softmax over the H + W entries, and the two weighted sums of v. Equals
    :func:`attnkern.ops.criss_cross_attention` without its [B, C, H + W − 1, H, W] gathers.

    Args:
        q, k: [B, C, H, W]; v: [B, C', H, W].

    Returns:
        [B, C', H, W].
    """
    H, W = q.shape[-2:]
    energy_row = torch.matmul(q.permute(0, 2, 3, 1), k.permute(0, 2, 1, 3))  # [B, H, W, W']: (h, w) · (h, w')
    energy_col = torch.matmul(q.permute(0, 3, 2, 1), k.permute(0, 3, 1, 2))  # [B, W, H, H']: (h, w) · (h', w)
    rows = torch.arange(H, device=q.device)
    itself = rows[:, None] == rows[None, :]
    energy_col = energy_col.masked_fill(itself, float("-inf")).permute(0, 2, 1, 3)  # [B, H, W, H']
    attention = torch.cat([energy_row, energy_col], dim=3).softmax(dim=3)
    weights_row, weights_col = attention[..., :W], attention[..., W:]
    out_row = torch.matmul(weights_row, v.permute(0, 2, 3, 1))  # [B, H, W, C']
    out_col = torch.matmul(weights_col.permute(0, 2, 1, 3), v.permute(0, 3, 2, 1))  # [B, W, H, C']
    return out_row.permute(0, 3, 1, 2) + out_col.permute(0, 3, 2, 1)


# ---- DRConv ----------------------------------------------------------------------------------------

def _pooling_matrix(length: Size, bins: int, like: Tensor) -> Tensor:
    """[bins, length]: row i averages positions floor(i·L/bins) .. ceil((i+1)·L/bins) − 1, the bins of
    ``AdaptiveAvgPool`` (overlapping when L is not a multiple of bins)."""
    i = torch.arange(bins, device=like.device)
    start = i * length // bins
    end = ((i + 1) * length + bins - 1) // bins
    position = torch.arange(length, device=like.device)
    member = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    return member.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool2d(x: Tensor, output_size: Union[int, Sequence[int]]) -> Tensor:
    """``F.adaptive_avg_pool2d`` as two products with pooling matrices built from the input size, so
    it exports (ONNX has no adaptive pooling; the TorchScript exporter refuses sizes that are not
    multiples of the output) and follows the input size in the exported program.

    Args:
        x: [B, C, H, W].
        output_size: (oh, ow) or one int for both.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    H, W = x.shape[-2:]
    rows, cols = _pooling_matrix(H, oh, x), _pooling_matrix(W, ow, x)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def _pair(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def dynamic_region_conv(x: Tensor, filters: Tensor, guide: Tensor, stride=1, padding=0, dilation=1) -> Tensor:
    """DRConv's dynamic region-aware convolution in standard ops: every region's per-sample convolution
    as a sum over the kh·kw kernel taps of batched products ([B, r·Cout, Cin] × [B, Cin, H'·W'] on
    shifted views of the padded input), then each output pixel takes its guide's argmax region (first
    on ties). The value equals :func:`attnkern.ops.dynamic_region_conv`; gradients follow DRConv's
    straight-through rule (as :func:`attnkern.reference.region_assign`). No grouped convolution over
    the batch, so exported programs keep the batch size dynamic.

    Args:
        x: [B, Cin, H, W]; filters: [B, r, Cout, Cin, kh, kw]; guide: [B, r, H', W'] at the output size.
        stride, padding, dilation: as ``F.conv2d``.
    """
    B, regions, c_out, c_in, kh, kw = filters.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    out_h, out_w = guide.shape[-2:]
    padded = F.pad(x, (pw, pw, ph, ph))
    weights = filters.reshape(B, regions * c_out, c_in, kh * kw)
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i * dh:i * dh + (out_h - 1) * sh + 1:sh, j * dw:j * dw + (out_w - 1) * sw + 1:sw]
            term = torch.matmul(weights[..., i * kw + j], tap.flatten(2))  # [B, r·Cout, H'·W']
            out = term if out is None else out + term
    every_region = out.view(B, regions, c_out, out_h, out_w)
    return reference.region_assign(every_region, guide)


# ---- window attention ------------------------------------------------------------------------------

def _window_view(x: Tensor, window_size: int) -> Tensor:
    """[B, H, W, *rest] → [B, nH, nW, N, *rest] (windows kept apart from the batch; only static
    dimensions are merged, so an exporter never has to prove a traced size divisible)."""
    B, H, W = x.shape[:3]
    rest = x.shape[3:]
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, *rest).transpose(2, 3)
    return x.contiguous().flatten(3, 4)


def _window_unview(windows: Tensor, window_size: int) -> Tensor:
    """The inverse of :func:`_window_view`, [B, nH, nW, N, *rest] → [B, H, W, *rest], as a gather
    (merging a traced nH with the window into H is what exporters cannot prove; indexing is)."""
    nH, nW = windows.shape[1:3]
    windows = windows.unflatten(3, (window_size, window_size))  # [B, nH, nW, ws, ws, *rest]
    rows = torch.arange(nH * window_size, device=windows.device)
    cols = torch.arange(nW * window_size, device=windows.device)
    return windows[:, (rows // window_size)[:, None], (cols // window_size)[None, :],
                   (rows % window_size)[:, None], (cols % window_size)[None, :]]


def _shift_mask(H: Size, W: Size, window_size: int, shift_size: int, like: Tensor) -> Tensor:
    """[nH, nW, N, N]: SwinIR's region mask of a shifted-window pass over an H×W image (0 within a
    region, −100 across), from the image size."""
    region = shift_regions(H, window_size, shift_size, like.device)[:, None] * 3 \
        + shift_regions(W, window_size, shift_size, like.device)[None, :]
    windows = _window_view(region[None], window_size)[0]  # [nH, nW, N]
    different = windows[..., :, None] != windows[..., None, :]
    return torch.where(different, torch.full((), SHIFT_MASK_VALUE,
                                             dtype=like.dtype, device=like.device),
                       torch.zeros((), dtype=like.dtype, device=like.device))


def window_attention(qkv: Tensor, bias: Optional[Tensor], window_size: int, shift_size: int = 0,
                     scale: Optional[float] = None) -> Tensor:
    """Shifted-window attention (Swin, SwinIR) in standard ops, the published order — cyclic shift,
    windows, softmax(scale·q·kᵀ + bias + region mask)·v, windows back, shift back — with the windows
    kept as their own dimensions [B, nH, nW, …] so that it exports at any (multiple-of-the-window) size.
    Equals :func:`attnkern.ops.window_attention` (``mask=None``).

    Args:
        qkv: [B, H, W, 3, heads, d], H and W multiples of window_size.
        bias: [heads, N, N] or None.
        window_size, shift_size, scale: as :func:`attnkern.ops.window_attention`.

    Returns:
        [B, H, W, heads, d].
    """
    B, H, W, _, heads, d = qkv.shape
    scale = d ** -0.5 if scale is None else scale
    if shift_size:
        qkv = torch.roll(qkv, shifts=(-shift_size, -shift_size), dims=(1, 2))
    windows = _window_view(qkv, window_size)  # [B, nH, nW, N, 3, heads, d]
    q, k, v = windows.permute(4, 0, 1, 2, 5, 3, 6).unbind(0)  # [B, nH, nW, heads, N, d]
    attn = torch.matmul(q * scale, k.transpose(-2, -1))
    if bias is not None:
        attn = attn + bias
    if shift_size:
        attn = attn + _shift_mask(H, W, window_size, shift_size, attn)[:, :, None]
    out = _window_unview(torch.matmul(attn.softmax(dim=-1), v).transpose(3, 4), window_size)  # [B, H, W, heads, d]
    if shift_size:
        out = torch.roll(out, shifts=(shift_size, shift_size), dims=(1, 2))
    return out
