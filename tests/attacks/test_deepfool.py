"""DeepFool on a really trained small CNN: minimal points, bounds, scale against PGD, errors, model state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.attacks import PGD, DeepFool
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]
EPS = {"linf": 0.3, "l2": 2.0}


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.fixture(scope="module")
def min_norm(trained_cnn: nn.Module, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """DeepFool's minimal points and distances on the batch, per norm (computed once)."""
    x, y = batch
    return {
        norm: DeepFool(threat=ThreatModel(norm=norm, eps=eps)).run_min_norm(trained_cnn, x, y)  # type: ignore[arg-type]
        for norm, eps in EPS.items()
    }


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_min_norm_points_are_adversarial_in_bounds_and_minimal(
    trained_cnn: nn.Module, batch: Batch, min_norm: dict[str, tuple[torch.Tensor, torch.Tensor]], norm: str
) -> None:
    x, y = batch
    threat = ThreatModel(norm=norm, eps=EPS[norm])  # type: ignore[arg-type]
    x_adv, distance = min_norm[norm]
    assert x_adv.shape == x.shape and distance.shape == (x.shape[0],)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    found = torch.isfinite(distance)
    assert float(found.float().mean()) > 0.95
    assert bool((predict(trained_cnn, x_adv)[found] != y[found]).all())
    torch.testing.assert_close(distance[found], threat.distance(x_adv, x)[found])
    assert bool((x_adv[~found] == x[~found]).all())
    # Already misclassified samples cost nothing; the others sit just past the boundary (2% overshoot).
    wrong = predict(trained_cnn, x) != y
    assert bool((distance[wrong] == 0).all()) and bool((distance[~wrong] > 0).all())
    moved = found & ~wrong
    shrunk = x + 0.9 * (x_adv - x)
    assert float((predict(trained_cnn, shrunk) == y)[moved].float().mean()) > 0.9


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attack_call_holds_eps_and_drops_accuracy(
    trained_cnn: nn.Module, batch: Batch, min_norm: dict[str, tuple[torch.Tensor, torch.Tensor]], norm: str
) -> None:
    x, y = batch
    x, y = x[:100], y[:100]
    threat = ThreatModel(norm=norm, eps=EPS[norm])  # type: ignore[arg-type]
    x_adv = DeepFool(threat=threat)(trained_cnn, x, y)
    # The call returns the minimal points, projected onto the eps-ball.
    torch.testing.assert_close(x_adv, threat.project(min_norm[norm][0][:100], x))
    assert float(threat.distance(x_adv, x).max()) <= threat.eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    clean = float((predict(trained_cnn, x) == y).float().mean())
    robust = float((predict(trained_cnn, x_adv) == y).float().mean())
    assert robust < clean - 0.5


def test_distances_are_on_the_scale_pgd_confirms(
    trained_cnn: nn.Module, batch: Batch, min_norm: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> None:
    # If DeepFool's distances were too small (or too large) PGD at that budget would disagree.
    x, y = batch
    threat = ThreatModel(norm="linf", eps=0.3)
    distance = min_norm["linf"][1]
    median = float(distance.median())
    pgd = PGD(threat=threat.with_eps(median * 1.05), steps=20)
    x_adv = pgd(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    assert float((predict(trained_cnn, x_adv) != y).float().mean()) >= 0.5
    x_small = PGD(threat=threat.with_eps(median * 0.3), steps=20)(
        trained_cnn, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert float((predict(trained_cnn, x_small) != y).float().mean()) < 0.5


def test_fewer_candidates_still_work(
    trained_cnn: nn.Module, batch: Batch, min_norm: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> None:
    x, y = batch
    threat = ThreatModel(norm="l2", eps=2.0)
    every = min_norm["l2"][1][:64]
    x_adv, top2 = DeepFool(threat=threat, candidates=2).run_min_norm(trained_cnn, x[:64], y[:64])
    found = torch.isfinite(top2)
    assert float(found.float().mean()) > 0.9
    assert bool((predict(trained_cnn, x_adv)[found] != y[:64][found]).all())
    # Searching only the top rival cannot beat searching all of them by much.
    assert float(top2[found].median()) >= 0.95 * float(every[found].median())


def test_errors(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    with pytest.raises(ConfigError, match="untargeted"):
        DeepFool(threat=ThreatModel())(trained_cnn, x, y, targets=(y + 1) % 10)
    with pytest.raises(ConfigError, match="untargeted"):
        DeepFool(threat=ThreatModel()).run_min_norm(trained_cnn, x, y, targets=(y + 1) % 10)
    with pytest.raises(ConfigError, match="l1"):
        DeepFool(threat=ThreatModel(norm="l1", eps=10.0))
    with pytest.raises(ConfigError, match="steps"):
        DeepFool(threat=ThreatModel(), steps=0)
    with pytest.raises(ConfigError, match="candidates"):
        DeepFool(threat=ThreatModel(), candidates=1)


def test_min_norm_runs_in_eval_mode_and_leaves_the_model_untouched(batch: Batch) -> None:
    x, y = batch
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
    )
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    DeepFool(threat=ThreatModel(norm="l2", eps=1.0), steps=3).run_min_norm(model, x[:16], y[:16])
    assert model.training and model[1].training
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics untouched
