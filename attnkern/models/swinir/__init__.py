"""SwinIR (Liang et al., "SwinIR: Image Restoration Using Swin Transformer", ICCV Workshops 2021) on
attnkern's fused window attention, official checkpoint loading, and a command-line tool:

    python -m attnkern.models.swinir --task classical_sr --scale 4 \\
        --weights 001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth --input lr.png --output sr.png \\
        --tile 256 --tile-overlap 32 [--device cuda --half]

The image is padded as the official test script (main_test_swinir.py) pads it — always
(h // window + 1)·window − h rows and columns of mirror padding, a whole window even when a side is
already a multiple (a 48×40 image runs at 56×48) — so outputs match the script's and the published
PSNR tables; ``--pad minimal`` pads only up to the next multiple. ``--tile`` runs the script's tile
procedure (:func:`tiled_forward`).

Tasks (the official test script's configurations, :func:`task_config`): ``classical_sr``,
``lightweight_sr``, ``real_sr`` (``--large`` or detected from the checkpoint), ``denoise``, ``jpeg``.
Images are read and written with Pillow (``pip install pillow``); ``.npy`` files (H×W or H×W×C, floats
in [0, 1] or uint8) work without it.

Modules: ``network`` (the network, its configurations, checkpoint loading), ``tiling`` (the official
script's padding and tiles), ``image_io`` (image files), ``cli`` (the command line).
"""

from .cli import main
from .image_io import read_image, write_image
from .network import TASKS, SwinIR, load_checkpoint, select_state_dict, task_config
from .tiling import PAD_MODES, official_pad, pad_to_multiple, tile_starts, tiled_forward

__all__ = [
    "SwinIR", "select_state_dict", "load_checkpoint", "task_config", "TASKS", "tiled_forward", "tile_starts",
    "pad_to_multiple", "official_pad", "PAD_MODES", "read_image", "write_image", "main",
]
