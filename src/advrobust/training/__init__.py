"""Training: one loop (trainer.py) shared by every objective (standard, and the adversarial ones)."""

from __future__ import annotations

from advrobust.training.adversarial import AdversarialObjective, AttackMode
from advrobust.training.callbacks import Callback, Stop, TrainContext
from advrobust.training.checkpoint import load_checkpoint, save_checkpoint
from advrobust.training.ema import EMA
from advrobust.training.fast_at import FastAT
from advrobust.training.free_at import FreeAT
from advrobust.training.guard import OverfitGuard
from advrobust.training.mart import MART
from advrobust.training.objectives import (
    Objective,
    Standard,
    StatefulObjective,
    create_objective,
    list_objectives,
    objective_options,
    register_objective,
)
from advrobust.training.pgd_at import PGDAT
from advrobust.training.trades import TRADES
from advrobust.training.trainer import CHECKPOINT_NAME, StepInfo, TrainConfig, TrainResult, train
from advrobust.training.validation import accuracy, robust_accuracy

__all__ = [
    "CHECKPOINT_NAME",
    "EMA",
    "MART",
    "PGDAT",
    "TRADES",
    "AdversarialObjective",
    "AttackMode",
    "Callback",
    "FastAT",
    "FreeAT",
    "Objective",
    "OverfitGuard",
    "Standard",
    "StatefulObjective",
    "StepInfo",
    "Stop",
    "TrainConfig",
    "TrainContext",
    "TrainResult",
    "accuracy",
    "create_objective",
    "list_objectives",
    "load_checkpoint",
    "objective_options",
    "register_objective",
    "robust_accuracy",
    "save_checkpoint",
    "train",
]
