"""advrobust: adversarial robustness for PyTorch image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

from advrobust.attacks import FGSM, PGD, Attack, create_attack, list_attacks
from advrobust.data import BatchLoader, ImageDataset, list_datasets, load_dataset
from advrobust.errors import AdvrobustError, ConfigError, DataError, InputError, ModelFileError
from advrobust.evaluation import EvalResult, evaluate, load_results
from advrobust.models import (
    ModelCard,
    Normalize,
    create_model,
    list_models,
    load_model,
    read_card,
    save_model,
)
from advrobust.threat import ThreatModel
from advrobust.training import TrainConfig, train

__all__ = [
    "FGSM",
    "PGD",
    "AdvrobustError",
    "Attack",
    "BatchLoader",
    "ConfigError",
    "DataError",
    "EvalResult",
    "ImageDataset",
    "InputError",
    "ModelCard",
    "ModelFileError",
    "Normalize",
    "ThreatModel",
    "TrainConfig",
    "__version__",
    "create_attack",
    "create_model",
    "evaluate",
    "list_attacks",
    "list_datasets",
    "list_models",
    "load_dataset",
    "load_model",
    "load_results",
    "read_card",
    "save_model",
    "train",
]
