"""FGSM on a really trained small CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.attacks import FGSM, create_attack
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]


def acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.2), ("l2", 2.0), ("l1", 10.0)])
def test_fgsm_stays_in_threat_model(trained_cnn: nn.Module, batch: Batch, norm: str, eps: float) -> None:
    x, y = batch
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    x_adv = FGSM(threat=threat)(trained_cnn, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(threat.distance(x_adv, x).max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_fgsm_linf_moves_every_free_pixel_by_eps(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    x_adv = FGSM(threat=ThreatModel(eps=0.1))(trained_cnn, x, y)
    delta = (x_adv - x).abs()
    free = (x > 0.1) & (x < 0.9)  # pixels the box does not clip
    moved = delta[free]
    assert float((moved - 0.1).abs().max()) < 1e-6 or float((moved > 0.099).float().mean()) > 0.95


def test_fgsm_lowers_accuracy(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    clean = acc(trained_cnn, x, y)
    assert clean > 0.9
    assert acc(trained_cnn, FGSM(threat=ThreatModel(eps=0.2))(trained_cnn, x, y), y) < clean - 0.3


def test_fgsm_is_deterministic_and_registered(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    attack = create_attack("fgsm", threat=ThreatModel(eps=0.1))
    assert isinstance(attack, FGSM)
    assert torch.equal(attack(trained_cnn, x, y), attack(trained_cnn, x, y))
    with pytest.raises(ConfigError, match="no option"):
        create_attack("fgsm", threat=ThreatModel(), steps=3)
