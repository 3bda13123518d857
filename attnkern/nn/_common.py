"""Helpers shared by the layers: argument checks (one clear error per bad constructor argument or
input), dtype promotion of gates, channel rounding."""

from typing import Optional, Tuple

import torch
from torch import Tensor


def positive_int(value: object, name: str, layer: str, minimum: int = 1) -> int:
    """value, unless it is not an int (a bool is not) >= minimum: then a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{layer}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def check_input(x: object, layer: str, channels: Optional[int] = None) -> None:
    """x must be a floating-point [B, C, H, W] tensor (with C = channels when given)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{layer}: expected input [B, C, H, W], got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer}: expected {channels} input channels, got shape {tuple(x.shape)}")


def common_dtype(x: Tensor, gate: Tensor) -> Tuple[Tensor, Tensor]:
    """x and a gate in their promoted dtype (under autocast the gate may come out narrower than x), as
    ``x * gate`` would compute."""
    dtype = torch.promote_types(x.dtype, gate.dtype)
    return x.to(dtype), gate.to(dtype)


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None, round_limit: float = 0.9) -> int:
    """v rounded to the nearest multiple of divisor, at least min_value (default divisor), and rounded
    up a step when that lost more than 10 % (timm's helper, which ResNeSt's SplitAttn uses)."""
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * v else rounded
