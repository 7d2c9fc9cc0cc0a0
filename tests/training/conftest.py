"""Adversarially trained small CNNs, each trained once per session on 2,000 mnist-mini images at linf eps 0.1."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from advrobust.attacks import PGD
from advrobust.data import ImageDataset
from advrobust.models import create_model
from advrobust.threat import ThreatModel
from advrobust.training import Objective, Standard, TrainConfig, TrainResult, create_objective, train

# A small eps so that a few CPU seconds of training already buy robustness.
THREAT = ThreatModel(norm="linf", eps=0.1)
# (epochs, options) per objective. Fewer attack steps than the papers' keep the suite fast; Free-AT's 3 epochs
# of 3 replays cost about what 9 epochs would (the paper divides the epochs by the replays).
SCHEDULES: dict[str, tuple[int, dict[str, object]]] = {
    "standard": (3, {}),
    "pgd-at": (3, {"steps": 3}),
    "fast-at": (3, {}),
    "trades": (3, {"steps": 5}),
    "mart": (3, {"steps": 5}),
    "free-at": (3, {"replays": 3}),
}

Trained = Callable[[str], tuple[nn.Module, TrainResult]]


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=10, in_channels=1, mean=[0.1307], std=[0.3081])


def make_objective(name: str, **options: object) -> Objective:
    return Standard() if name == "standard" else create_objective(name, threat=THREAT, **options)


def clean_and_robust(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    """Clean accuracy and accuracy under PGD-20 (linf eps 0.1) on the 200 test images."""
    x, y = batch
    x_adv = PGD(threat=THREAT, steps=20)(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = model(x).argmax(dim=1) == y
        robust = clean & (model(x_adv).argmax(dim=1) == y)
    return float(clean.float().mean()), float(robust.float().mean())


@pytest.fixture(scope="session")
def at_data(mini_train: ImageDataset) -> ImageDataset:
    return mini_train.take(2000)


@pytest.fixture(scope="session")
def trained_with(at_data: ImageDataset) -> Trained:
    """small-cnn trained with an objective (Adam, lr 2e-3, batch 32), once per objective and session."""
    cache: dict[str, tuple[nn.Module, TrainResult]] = {}

    def get(name: str) -> tuple[nn.Module, TrainResult]:
        if name not in cache:
            epochs, options = SCHEDULES[name]
            model = small_cnn()
            config = TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, seed=0, robust_val=0)
            result = train(model, at_data, objective=make_objective(name, **options), config=config)
            cache[name] = (model, result)
        return cache[name]

    return get
