"""Ultralytics trainers that register attnkern's layers wherever they run: multi-GPU (DDP) training.

Ultralytics trains on several GPUs by writing a script and launching it with ``torch.distributed.run``,
one process per GPU. The script rebuilds the trainer from its class (pickled *by reference*: each
worker imports the module that defines it) and nothing else of the calling process — so a
``register()`` made in that process does not reach the workers. Importing this module calls
:func:`attnkern.integrations.ultralytics.register`, and each trainer here calls it again when built, so
passing one of them as ``trainer=`` makes every worker register attnkern's layers before it builds,
loads or resumes a model::

    from attnkern.integrations.ultralytics import register
    from attnkern.integrations.ultralytics_trainers import DetectionTrainer
    register()
    model = YOLO("configs/yolo11n-soca.yaml")
    model.train(data="coco.yaml", epochs=100, imgsz=640, device=[0, 1], trainer=DetectionTrainer)

One trainer per Ultralytics task: :class:`DetectionTrainer`, :class:`SegmentationTrainer`,
:class:`PoseTrainer`, :class:`OBBTrainer`, :class:`ClassificationTrainer` — each the Ultralytics class of
that name, unchanged otherwise. :func:`trainer_for` picks the one for a task name.
"""

from typing import Type

from ultralytics.models.yolo.classify import ClassificationTrainer as _ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer as _DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer as _OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer as _PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer as _SegmentationTrainer

from .ultralytics import register

__all__ = ["DetectionTrainer", "SegmentationTrainer", "PoseTrainer", "OBBTrainer", "ClassificationTrainer",
           "trainer_for"]

register()  # the DDP workers import this module (to unpickle the trainer class) before anything else runs


class _Registers:
    """Mixin: registers attnkern's layers before the Ultralytics trainer is built (idempotent)."""

    def __init__(self, *args, **kwargs):
        register()
        super().__init__(*args, **kwargs)


class DetectionTrainer(_Registers, _DetectionTrainer):
    """Ultralytics' ``DetectionTrainer`` with attnkern's layers registered in every process."""


class SegmentationTrainer(_Registers, _SegmentationTrainer):
    """Ultralytics' ``SegmentationTrainer`` with attnkern's layers registered in every process."""


class PoseTrainer(_Registers, _PoseTrainer):
    """Ultralytics' ``PoseTrainer`` with attnkern's layers registered in every process."""


class OBBTrainer(_Registers, _OBBTrainer):
    """Ultralytics' ``OBBTrainer`` with attnkern's layers registered in every process."""


class ClassificationTrainer(_Registers, _ClassificationTrainer):
    """Ultralytics' ``ClassificationTrainer`` with attnkern's layers registered in every process."""


_BY_TASK = {"detect": DetectionTrainer, "segment": SegmentationTrainer, "pose": PoseTrainer, "obb": OBBTrainer,
            "classify": ClassificationTrainer}


def trainer_for(task: str) -> Type:
    """The trainer class of this module for an Ultralytics task name (``model.task``)."""
    try:
        return _BY_TASK[task]
    except KeyError:
        raise ValueError(f"no attnkern trainer for task {task!r}; tasks: {', '.join(_BY_TASK)}") from None
