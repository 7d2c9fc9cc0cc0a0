"""HopSkipJump: labels only, within the threat model and the query budget, on a CNN trained on real MNIST."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from advrobust.attacks import PGD, HopSkipJump
from advrobust.errors import ConfigError
from advrobust.evaluation import evaluate
from advrobust.models.external import DecisionOnly
from advrobust.threat import ThreatModel


class Counting(nn.Module):
    """Counts the images each sample sends through the model (rows are matched by their bytes)."""

    def __init__(self, model: nn.Module, x: Tensor) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.images += x.shape[0]
        out: Tensor = self.model(x)
        return out


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


@pytest.fixture
def correct(trained_cnn: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    x, y = batch[0][:40], batch[1][:40]
    with torch.no_grad():
        keep = trained_cnn(x).argmax(dim=1) == y
    return x[keep], y[keep]


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.25), ("l2", 3.0)])
def test_lowers_accuracy_within_threat_and_budget(
    trained_cnn: nn.Module, correct: tuple[Tensor, Tensor], norm: str, eps: float
) -> None:
    x, y = correct
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    attack = HopSkipJump(threat=threat, queries=300)
    counter = Counting(trained_cnn, x)
    x_adv, used = attack.run_with_queries(
        counter, x, y, generator=torch.Generator().manual_seed(0), check=False
    )
    assert int(used.max()) <= 300
    assert counter.images == int(used.sum())  # every image through the model was counted, none more
    assert bool(threat.contains(x_adv, x).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert _accuracy(trained_cnn, x_adv, y) < 0.8


def test_labels_only_seed_reproduces_and_more_queries_find_more(
    trained_cnn: nn.Module, correct: tuple[Tensor, Tensor]
) -> None:
    x, y = correct[0][:16], correct[1][:16]
    threat = ThreatModel(norm="l2", eps=2.0)

    def run(model: nn.Module, queries: int) -> Tensor:
        attack = HopSkipJump(threat=threat, queries=queries)
        return attack(model, x, y, generator=torch.Generator().manual_seed(3))

    full = run(trained_cnn, 150)
    # The predicted label is all it uses: the same points through a labels-only view of the model.
    assert torch.equal(full, run(DecisionOnly(trained_cnn), 150))
    assert torch.equal(full, run(trained_cnn, 150))
    assert _accuracy(trained_cnn, run(trained_cnn, 600), y) <= _accuracy(trained_cnn, full, y)


def test_targeted_successes_hit_the_target(trained_cnn: nn.Module, correct: tuple[Tensor, Tensor]) -> None:
    x, y = correct[0][:20], correct[1][:20]
    targets = (y + 1) % 10
    threat = ThreatModel(norm="l2", eps=4.0)
    x_adv = HopSkipJump(threat=threat, queries=400)(
        trained_cnn, x, y, targets=targets, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        predicted = trained_cnn(x_adv).argmax(dim=1)
    moved = predicted != y
    assert bool(moved.any())
    assert bool((predicted[moved] == targets[moved]).all())


def test_evaluate_with_decision_access(trained_cnn: nn.Module, correct: tuple[Tensor, Tensor]) -> None:
    x, y = correct[0][:12], correct[1][:12]
    threat = ThreatModel(norm="linf", eps=0.3)
    labels_only = DecisionOnly(trained_cnn)
    result = evaluate(labels_only, (x, y), [HopSkipJump(threat=threat, queries=200)], access="decision")
    assert result.meta["access"] == "decision" and result.meta["upper_bound"] is True
    assert "upper bound" in result.meta["access_note"]
    assert result.robust.value < result.clean.value
    with pytest.raises(ConfigError, match="needs more than labels"):
        evaluate(labels_only, (x, y), [PGD(threat=threat)], access="decision")


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="l1"):
        HopSkipJump(threat=ThreatModel(norm="l1", eps=1.0))
    with pytest.raises(ConfigError, match="queries"):
        HopSkipJump(threat=ThreatModel(eps=0.1), queries=0)
    assert HopSkipJump.gradient_free and HopSkipJump.labels_only
