"""Shared fixtures: a small CNN trained for real on the bundled MNIST subset (a few seconds, once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from advrobust.data import ImageDataset, load_dataset
from advrobust.models import create_model
from advrobust.training import TrainConfig, train

# Tiny models run fastest on one thread, and helpers or CI jobs sharing the cores do not thrash.
torch.set_num_threads(1)


class CountingModel(nn.Module):
    """Wraps a model and counts the samples it is run on (the work an attack does)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += x.shape[0]
        out: torch.Tensor = self.model(x)
        return out


@pytest.fixture
def counting() -> type[CountingModel]:
    """The ``CountingModel`` class, for tests that measure how many samples an attack runs."""
    return CountingModel


class NaNOffTheData(nn.Module):
    """The model on inputs of the data's 1/255 grid, NaN logits anywhere else (where attacks go)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(x)
        on_grid = ((x * 255 - (x * 255).round()).abs() < 1e-3).flatten(1).all(dim=1)
        return torch.where(on_grid.unsqueeze(1), logits, torch.full_like(logits, float("nan")))


@pytest.fixture
def nan_off_the_data() -> type[NaNOffTheData]:
    """The ``NaNOffTheData`` class: a model whose outputs are NaN off the data (masked, and a NaN trap)."""
    return NaNOffTheData


@pytest.fixture(scope="session")
def mini_train() -> ImageDataset:
    return load_dataset("mnist-mini", split="train")


@pytest.fixture(scope="session")
def mini_test() -> ImageDataset:
    return load_dataset("mnist-mini", split="test")


@pytest.fixture(scope="session")
def trained_cnn(mini_train: ImageDataset) -> nn.Module:
    """small-cnn trained normally for 4 epochs on 5,000 real MNIST images (~96% test accuracy)."""
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1, mean=[0.1307], std=[0.3081])
    train(model, mini_train, config=TrainConfig(epochs=4, batch_size=32, seed=0))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def batch(mini_test: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """200 test images as floats in [0, 1] with their labels."""
    data = mini_test.take(200)
    return data.images.float() / 255, data.labels


@pytest.fixture
def real_mnist_root() -> Path:
    """The folder with the real MNIST files (ADVROBUST_DATA); skips the test when it is not set."""
    root = os.environ.get("ADVROBUST_DATA")
    if not root:
        pytest.skip("set ADVROBUST_DATA to the folder holding the real MNIST files to run this test")
    return Path(root)
