"""Fixtures for the models tests: a tiny normalized MNIST CNN, saved into a run directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from advrobust.models import Classifier, ModelCard, create_model, save_model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # On a shared, busy CPU two intra-op threads spin against each other: tiny models run 10-100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model() -> Classifier:
    torch.manual_seed(0)
    return create_model(
        "small-cnn", num_classes=10, in_channels=1, mean=[0.1307], std=[0.3081], input_size=12
    )


@pytest.fixture
def tiny_card(tiny_model: Classifier) -> ModelCard:
    return ModelCard.from_model(
        tiny_model,
        input_shape=(1, 12, 12),
        dataset="mnist",
        classes=[str(i) for i in range(10)],
        training={"objective": "pgd_at", "epochs": 1, "seed": 0, "eps": 0.3, "steps": [40, 10]},
        metrics={"clean_accuracy": 0.99, "robust_accuracy": 0.89},
    )


@pytest.fixture
def saved_run(tmp_path: Path, tiny_model: Classifier, tiny_card: ModelCard) -> Path:
    return save_model(tiny_model, tmp_path / "run", tiny_card)
