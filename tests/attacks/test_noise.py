"""Random noise on a really trained small CNN: the baseline is in bounds, weaker than PGD, and seeded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.attacks import PGD, RandomNoise
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 4.0), ("l1", 20.0)])
def test_bounds_and_eps(trained_cnn: nn.Module, batch: Batch, norm: str, eps: float) -> None:
    x, y = batch
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    x_adv = RandomNoise(threat=threat, draws=20)(
        trained_cnn, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert float(threat.distance(x_adv, x).max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert not torch.equal(x_adv, x)


def test_weaker_than_pgd_but_not_harmless(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    threat = ThreatModel(eps=0.3)
    noise = RandomNoise(threat=threat)(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    pgd = PGD(threat=threat, steps=20)(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    clean = float((predict(trained_cnn, x) == y).float().mean())
    noise_acc = float((predict(trained_cnn, noise) == y).float().mean())
    pgd_acc = float((predict(trained_cnn, pgd) == y).float().mean())
    assert pgd_acc + 0.5 < noise_acc < clean


def test_seed_reproduces_and_more_draws_fool_a_superset(trained_cnn: nn.Module, batch: Batch) -> None:
    # Every draw covers the whole batch, so the first 10 draws of a 40-draw run are those of a 10-draw run.
    x, y = batch
    threat = ThreatModel(eps=0.3)
    attack = RandomNoise(threat=threat, draws=10)
    a = attack(trained_cnn, x, y, generator=torch.Generator().manual_seed(3))
    b = attack(trained_cnn, x, y, generator=torch.Generator().manual_seed(3))
    c = attack(trained_cnn, x, y, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    more = RandomNoise(threat=threat, draws=40)(trained_cnn, x, y, generator=torch.Generator().manual_seed(3))
    fooled_few, fooled_more = predict(trained_cnn, a) != y, predict(trained_cnn, more) != y
    assert bool((fooled_more | ~fooled_few).all()) and int(fooled_more.sum()) > int(fooled_few.sum())
    # The first fooling draw is kept: samples fooled within 10 draws come back identical.
    assert torch.equal(more[fooled_few], a[fooled_few])


def test_targeted_and_gradient_free(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    targets = (y + 1) % 10
    attack = RandomNoise(threat=ThreatModel(eps=0.5), draws=30)
    assert attack.gradient_free
    x_adv = attack(trained_cnn, x, y, targets=targets, generator=torch.Generator().manual_seed(0))
    hit = predict(trained_cnn, x_adv) == targets
    assert 0 < int(hit.sum()) < x.shape[0]
    with pytest.raises(ConfigError, match="draws"):
        RandomNoise(threat=ThreatModel(), draws=0)
