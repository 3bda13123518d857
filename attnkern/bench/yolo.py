"""A whole detector: YOLO11n with SOCA at P5 (configs/yolo11n-soca.yaml, through
attnkern.integrations.ultralytics), inference forward, with attnkern's SOCA against the same model
with SAN's published SOCA formulation (covariance through the M×M centering matrix, Newton–Schulz
through autograd) in its place, same weights.

Where onnxruntime is installed, a row for the same detector exported to ONNX (standard operators,
attnkern's portable formulation) and run by ONNX Runtime on the CPU.

Needs the ``ultralytics`` package (the ``yolo`` extra) and the source tree's ``configs/``; without them,
or in --smoke runs, no rows.
"""

from pathlib import Path

import torch
from torch import nn

import attnkern
from attnkern import reference

from .case import Case, onnxruntime_row

# The source tree's example YAML (configs/ is not installed with the package).
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "yolo11n-soca.yaml"
SHAPES = [("YOLO11n-SOCA 8×3×320×320", 8, 320), ("YOLO11n-SOCA 1×3×640×640", 1, 640)]


class SeedSOCA(nn.Module):
    """SAN's SOCA forward as published, on an attnkern.nn.SOCA's weights."""

    def __init__(self, layer: attnkern.nn.SOCA):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        batch, channels = x.shape[:2]
        cov = reference.covpool_centering_matrix(x)  # SOCA crops only above 1000×1000
        root = reference.sqrtm_newton_schulz(cov, self.layer.iters)
        return self.layer.conv_du(torch.mean(root, 1).view(batch, channels, 1, 1)) * x


def cases(device, smoke):
    try:
        from ultralytics.nn.tasks import DetectionModel
    except ImportError:
        return
    if smoke or not CONFIG.is_file():
        return
    from attnkern.integrations.ultralytics import register

    register()
    model = DetectionModel(str(CONFIG), ch=3, nc=80, verbose=False).to(device).eval()
    seed_model = DetectionModel(str(CONFIG), ch=3, nc=80, verbose=False).to(device).eval()
    seed_model.load_state_dict(model.state_dict())
    index = next(i for i, m in enumerate(seed_model.model) if isinstance(m, attnkern.nn.SOCA))
    soca = seed_model.model[index]
    seed_soca = SeedSOCA(soca)
    for attribute in ("i", "f", "type", "np"):  # what Ultralytics' forward reads from each layer
        setattr(seed_soca, attribute, getattr(soca, attribute))
    seed_model.model[index] = seed_soca
    ort_impls, ort_skip, ort_notes = onnxruntime_row(model, torch.rand(1, 3, 320, 320, device=device), device)
    for label, batch, side in SHAPES:
        def make_inputs(batch=batch, side=side):
            return (torch.rand(batch, 3, side, side, device=device),)

        yield Case(family="YOLO11n-SOCA detector", shape=label, dtype=torch.float32, make_inputs=make_inputs,
                   impls={"seed SOCA": lambda x: seed_model(x)[0], "attnkern": lambda x: model(x)[0], **ort_impls},
                   skip=ort_skip, notes=ort_notes, forward_only=True)
