"""Training: one loop (trainer.py) shared by every objective (standard, and the adversarial ones)."""

from __future__ import annotations

from advrobust.training.checkpoint import load_checkpoint, save_checkpoint
from advrobust.training.objectives import (
    Objective,
    Standard,
    create_objective,
    list_objectives,
    register_objective,
)
from advrobust.training.trainer import CHECKPOINT_NAME, StepInfo, TrainConfig, TrainResult, accuracy, train

__all__ = [
    "CHECKPOINT_NAME",
    "Objective",
    "Standard",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "create_objective",
    "list_objectives",
    "load_checkpoint",
    "register_objective",
    "save_checkpoint",
    "train",
]
