"""Carlini-Wagner L2 on a really trained small CNN: minimal distances, binary search, projection, targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.attacks import CW, PGD, create_attack, margin
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]
UNBOUNDED = ThreatModel(norm="l2", eps=1e3)
# Fewer steps than the paper's 1000 x 9 keep the tests fast; a larger Adam step makes up for it on MNIST,
# whose saturated 0/1 pixels sit deep in the tanh's flat tails.
FAST = {"steps": 100, "binary_search_steps": 4, "initial_const": 0.1, "step_size": 0.1}


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(x)
    return out


@pytest.fixture(scope="module")
def small(batch: Batch) -> Batch:
    return batch[0][:64], batch[1][:64]


@pytest.fixture(scope="module")
def min_norm(trained_cnn: nn.Module, small: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = small
    return CW(threat=UNBOUNDED, **FAST).run_min_norm(trained_cnn, x, y)  # type: ignore[arg-type]


def test_successes_are_misclassified_with_their_distance(
    trained_cnn: nn.Module, small: Batch, min_norm: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = small
    x_adv, distance = min_norm
    found = torch.isfinite(distance)
    assert distance.dtype == torch.float64 and distance.shape == y.shape
    assert float(found.float().mean()) > 0.9
    assert bool((predict(trained_cnn, x_adv[found]).argmax(1) != y[found]).all())
    torch.testing.assert_close(distance[found], UNBOUNDED.distance(x_adv, x)[found])
    assert torch.equal(x_adv[~found], x[~found])  # failures come back unchanged
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(distance[found].max()) < 5.0  # normal MNIST models fall within a few L2 units


def test_closer_than_pgd_at_the_same_success(
    trained_cnn: nn.Module, small: Batch, min_norm: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = small
    _, distance = min_norm
    threat = ThreatModel(norm="l2", eps=2.0)
    pgd = PGD(threat=threat, steps=40)(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    pgd_found = predict(trained_cnn, pgd).argmax(1) != y
    pgd_distance = threat.distance(pgd, x)
    both = pgd_found & torch.isfinite(distance)
    assert bool(both.sum() >= pgd_found.sum() - 1)  # CW fools (almost) every sample PGD fools
    closer = distance[both] < pgd_distance[both]
    assert float(closer.float().mean()) > 0.8
    assert float(distance[both].median()) < float(pgd_distance[both].median()) - 0.3
    # At PGD's budget CW's minimal points succeed about as often: CW descends to a nearby boundary, and
    # now and then PGD's random start finds another class's boundary a little closer (one sample here).
    assert int((distance <= 2.0).sum()) >= int(pgd_found.sum()) - 2


def test_binary_search_finds_smaller_distances_than_one_const(trained_cnn: nn.Module, small: Batch) -> None:
    x, y = small[0][:32], small[1][:32]
    settings = {"steps": 50, "initial_const": 10.0, "step_size": 0.1}
    _, single = CW(threat=UNBOUNDED, binary_search_steps=1, **settings).run_min_norm(trained_cnn, x, y)  # type: ignore[arg-type]
    _, searched = CW(threat=UNBOUNDED, binary_search_steps=5, **settings).run_min_norm(trained_cnn, x, y)  # type: ignore[arg-type]
    found = torch.isfinite(single)
    assert float(found.float().mean()) > 0.9
    # The first round is the single-const run, and each sample keeps its smallest success.
    assert bool((searched[found] <= single[found]).all())
    assert float(searched[found].mean()) < 0.8 * float(single[found].mean())


def test_projection_with_finite_and_large_eps(trained_cnn: nn.Module, small: Batch) -> None:
    x, y = small[0][:32], small[1][:32]
    settings = {"steps": 30, "binary_search_steps": 2, "initial_const": 1.0, "step_size": 0.1}
    x_min, distance = CW(threat=UNBOUNDED, **settings).run_min_norm(trained_cnn, x, y)  # type: ignore[arg-type]
    # A large eps leaves the minimum-norm result as it is.
    x_big = CW(threat=UNBOUNDED, **settings)(trained_cnn, x, y)  # type: ignore[arg-type]
    torch.testing.assert_close(x_big, x_min, rtol=0, atol=1e-6)
    torch.testing.assert_close(UNBOUNDED.distance(x_big, x), UNBOUNDED.distance(x_min, x), rtol=0, atol=1e-5)
    # A finite eps projects the farther points back onto the ball; the nearer ones stay.
    threat = ThreatModel(norm="l2", eps=1.0)
    x_adv = CW(threat=threat, **settings)(trained_cnn, x, y)  # type: ignore[arg-type]
    assert bool(threat.contains(x_adv, x).all())
    near = distance < 1.0 - 1e-3
    far = torch.isfinite(distance) & ~near
    assert bool(near.any()) and bool(far.any())
    torch.testing.assert_close(x_adv[near], x_min[near], rtol=0, atol=1e-6)
    assert bool((threat.distance(x_adv[far], x[far]) > 1.0 - 1e-3).all())


def test_targeted_cw_reaches_targets_with_confidence(trained_cnn: nn.Module, small: Batch) -> None:
    x, y = small[0][:32], small[1][:32]
    targets = (y + 1) % 10
    attack = CW(threat=UNBOUNDED, confidence=2.0, **FAST)  # type: ignore[arg-type]
    x_adv, distance = attack.run_min_norm(trained_cnn, x, y, targets=targets)
    found = torch.isfinite(distance)
    assert float(found.float().mean()) > 0.9
    logits = predict(trained_cnn, x_adv[found])
    assert bool((logits.argmax(1) == targets[found]).all())
    assert bool((margin(logits, targets[found]) >= 2.0 - 1e-4).all())  # the confidence kappa is kept


def test_config_errors_and_registry() -> None:
    with pytest.raises(ConfigError, match="l2 attack"):
        CW(threat=ThreatModel(norm="linf", eps=0.3))
    for bad in ({"steps": 0}, {"binary_search_steps": 0}, {"initial_const": 0.0}, {"confidence": -1.0}):
        with pytest.raises(ConfigError):
            CW(threat=UNBOUNDED, **bad)  # type: ignore[arg-type]
    attack = create_attack("cw", threat=ThreatModel(norm="l2", eps=2.0))
    assert isinstance(attack, CW)
    assert (attack.steps, attack.binary_search_steps, attack.initial_const) == (1000, 9, 1e-3)
    assert (attack.confidence, attack.step_size, attack.abort_early) == (0.0, 0.01, True)
