"""The SwinIR command line, ``python -m attnkern.models.swinir`` (see :mod:`attnkern.models.swinir`)."""

import argparse
import pickle
from typing import Optional, Sequence

import torch
from torch import Tensor

from .image_io import _pillow, read_image, write_image
from .network import TASKS, SwinIR, load_checkpoint, select_state_dict, task_config
from .tiling import PAD_MODES, official_pad, tiled_forward

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attnkern.models.swinir",
                                description="Restore an image with an official SwinIR checkpoint on attnkern's "
                                            "kernels.")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--scale", type=int, default=None, help="upscale factor (classical_sr, lightweight_sr)")
    p.add_argument("--weights", required=True, help="official checkpoint (.pth)")
    p.add_argument("--input", required=True, help="input image (PNG/JPEG/... with Pillow, or .npy)")
    p.add_argument("--output", required=True, help="output image (PNG with Pillow, or .npy)")
    p.add_argument("--tile", type=int, default=None, help="tile size (default: the whole image at once)")
    p.add_argument("--tile-overlap", type=int, default=32, help="overlap of neighbouring tiles (default 32)")
    p.add_argument("--pad", choices=PAD_MODES, default="official",
                   help="official (default): as main_test_swinir.py, always (h // window + 1)·window − h rows "
                        "(and columns) of mirror padding, a whole window even when h is a multiple (a 48×40 "
                        "image runs at 56×48), so results compare with the published tables; minimal: only "
                        "up to the next multiple of the window")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--half", action="store_true", help="float16 inference (CUDA only)")
    p.add_argument("--large", action="store_true", help="real_sr: the large model (also detected from the weights)")
    p.add_argument("--param-key", default=None,
                   help="checkpoint entry with the weights (default: params_ema, else params, else the file itself)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (see the module docstring); returns 0, or raises SystemExit with a message."""
    args = _parser().parse_args(argv)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if args.half and device.type != "cuda":
            raise ValueError("--half needs a CUDA device (--device cuda)")
        if not args.input.lower().endswith(".npy") or not args.output.lower().endswith(".npy"):
            _pillow()  # fail before the model is built
        state, _ = select_state_dict(load_checkpoint(args.weights), args.param_key)
        first = state.get("conv_first.weight")
        if not isinstance(first, Tensor) or first.dim() != 4:
            raise ValueError(f"{args.weights}: no conv_first.weight: not a SwinIR checkpoint")
        large = args.large or (args.task == "real_sr" and first.shape[0] == 240)
        config = task_config(args.task, args.scale, large=large, in_chans=first.shape[1])
        model = SwinIR.from_checkpoint(state, **config).to(device)
        img = read_image(args.input, config["in_chans"]).to(device)
        if args.half:
            model, img = model.half(), img.half()
        h, w = img.shape[-2:]
        window = config["window_size"]
        padded = official_pad(img, window, args.pad)
        if args.tile is not None and min(args.tile, *padded.shape[-2:]) % window:
            raise ValueError(f"--tile: the tile side min(tile, padded height, padded width) = "
                             f"{min(args.tile, *padded.shape[-2:])} must be a multiple of the window ({window}), "
                             "as in the official script")
        with torch.inference_mode():
            out = tiled_forward(model, padded, config["upscale"], args.tile, args.tile_overlap,
                                progress=not args.quiet)
        write_image(out[..., :h * config["upscale"], :w * config["upscale"]], args.output)
    except (ImportError, ValueError, OSError, pickle.UnpicklingError) as e:
        raise SystemExit(f"swinir: error: {e}") from e
    return 0
