"""Argument checks shared by the layers: one clear ValueError per bad constructor argument or input."""

from torch import Tensor


def positive_int(value: object, name: str, layer: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{layer}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def check_input(x: object, layer: str, channels: int = None) -> None:
    """x must be a floating-point [B, C, H, W] tensor (with C = channels when given)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{layer}: expected input [B, C, H, W], got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer}: expected {channels} input channels, got shape {tuple(x.shape)}")
