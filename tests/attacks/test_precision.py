"""Attacks stay correct on float64 models and under bf16 autocast (input gradients and steps in float32)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advrobust.attacks import create_attack
from advrobust.data import ImageDataset
from advrobust.threat import ThreatModel

THREAT = ThreatModel(norm="linf", eps=0.1)
ATTACKS = {
    "pgd": {"steps": 10},
    "apgd": {"steps": 20},
    "fab": {"steps": 20},
    "square": {"queries": 200},
}


@pytest.fixture(scope="module")
def small(mini_test: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    data = mini_test.take(64)
    return data.images.float() / 255, data.labels


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_float64_model(trained_cnn: nn.Module, small: tuple[torch.Tensor, torch.Tensor], name: str) -> None:
    model = copy.deepcopy(trained_cnn).double().eval()
    x, y = small[0].double(), small[1]
    attack = create_attack(name, threat=THREAT, **ATTACKS[name])
    x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert x_adv.dtype == torch.float64
    assert bool(THREAT.contains(x_adv, x, tol=1e-9).all())
    assert _accuracy(model, x_adv, y) < _accuracy(model, x, y) - 0.1


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_under_bf16_autocast(
    trained_cnn: nn.Module, small: tuple[torch.Tensor, torch.Tensor], name: str
) -> None:
    x, y = small
    attack = create_attack(name, threat=THREAT, **ATTACKS[name])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    assert x_adv.dtype == torch.float32
    assert bool(THREAT.contains(x_adv, x, tol=1e-6).all())
    # Measured in float32: the bf16 attack still finds adversarial points.
    assert _accuracy(trained_cnn, x_adv, y) < _accuracy(trained_cnn, x, y) - 0.1
