"""Reading and writing images for the SwinIR command line: with Pillow, or ``.npy`` files without it."""

import torch
from torch import Tensor

__all__ = ["read_image", "write_image"]


def _pillow():
    """PIL.Image, or an ImportError that says how to get it."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading and writing PNG/JPEG images needs Pillow: pip install pillow "
                          "(or use .npy files)") from e
    return Image


def read_image(path: str, in_chans: int = 3) -> Tensor:
    """An image file as [1, in_chans, H, W] float32 in [0, 1]: with Pillow (converted to RGB for 3
    channels, to grayscale for 1), or a ``.npy`` array H×W or H×W×C (uint8 is divided by 255)."""
    if str(path).lower().endswith(".npy"):
        import numpy as np
        array = np.load(path)
        scale = 255.0 if array.dtype == np.uint8 else 1.0
        img = torch.from_numpy(np.ascontiguousarray(array)).float() / scale
    else:
        Image = _pillow()
        with Image.open(path) as opened:
            img = torch.frombuffer(bytearray(opened.convert("RGB" if in_chans == 3 else "L").tobytes()),
                                   dtype=torch.uint8)
            width, height = opened.size
        img = img.view(height, width, -1).float() / 255.0
    if img.dim() == 2:
        img = img.unsqueeze(-1)
    if img.dim() != 3 or img.shape[-1] != in_chans:
        raise ValueError(f"{path}: expected an H×W×{in_chans} image for this model, got shape {tuple(img.shape)}")
    return img.permute(2, 0, 1).unsqueeze(0).contiguous()


def write_image(img: Tensor, path: str) -> None:
    """Writes [1, C, H, W] (C = 1 or 3, values in [0, 1]): clamped and rounded to 8 bits with Pillow,
    or as float32 H×W×C (H×W for one channel, not clamped) to a ``.npy`` file."""
    hwc = img.detach()[0].float().cpu().permute(1, 2, 0)
    if hwc.shape[-1] == 1:
        hwc = hwc[..., 0]
    if str(path).lower().endswith(".npy"):
        import numpy as np
        np.save(path, hwc.numpy().astype(np.float32))
        return
    Image = _pillow()
    data = (hwc.clamp(0, 1) * 255.0).round().to(torch.uint8).contiguous()
    mode = "L" if data.dim() == 2 else "RGB"
    Image.frombytes(mode, (data.shape[1], data.shape[0]), _tensor_bytes(data)).save(path)


def _tensor_bytes(t: Tensor) -> bytes:
    """The bytes of a contiguous CPU uint8 tensor (through numpy when it is installed)."""
    try:
        return t.numpy().tobytes()
    except (ImportError, RuntimeError):
        return bytes(t.reshape(-1).tolist())
