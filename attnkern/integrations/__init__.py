"""Glue between attnkern's layers and other frameworks.

Each submodule imports its framework only when it is imported itself, so ``import attnkern`` never
needs them:

    from attnkern.integrations import ultralytics as ak_yolo
    ak_yolo.register()                # attnkern layers usable by name in Ultralytics model YAMLs

    from attnkern.integrations.ultralytics_trainers import DetectionTrainer
    model.train(..., device=[0, 1], trainer=DetectionTrainer)   # multi-GPU: every worker registers
"""

__all__ = ["ultralytics", "ultralytics_trainers"]
