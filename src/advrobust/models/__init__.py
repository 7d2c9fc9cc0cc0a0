"""Model architectures, the registry that builds them, and safe model files (safetensors + a JSON card)."""

from __future__ import annotations

# Importing the architecture modules registers them.
from advrobust.models import cnn, resnet, wrn  # noqa: F401
from advrobust.models.card import ModelCard
from advrobust.models.io import load_model, read_card, save_model
from advrobust.models.normalize import Normalize
from advrobust.models.registry import Classifier, create_model, list_models, model_options, register_model

__all__ = [
    "Classifier",
    "ModelCard",
    "Normalize",
    "create_model",
    "list_models",
    "load_model",
    "model_options",
    "read_card",
    "register_model",
    "save_model",
]
