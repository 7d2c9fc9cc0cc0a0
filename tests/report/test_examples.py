"""The gallery's replay of an attack on one image: which attack shows an image that withstood them all."""

from __future__ import annotations

from pathlib import Path

import torch

from advrobust.attacks import create_attack
from advrobust.data import load_dataset
from advrobust.evaluation import evaluate
from advrobust.models import load_model
from advrobust.report.data import Evaluation
from advrobust.report.examples import _attack_one
from advrobust.threat import ThreatModel


def test_a_standing_image_is_shown_with_the_first_attack_that_moves_it(runs_root: Path) -> None:
    model = load_model(runs_root / "standard").eval()
    data = load_dataset("mnist-mini", split="test").take(20)
    x, y = data.images.float() / 255, data.labels
    threat = ThreatModel(norm="linf", eps=0.02)  # too small to break most images
    attacks = [
        create_attack(name, threat=threat, **kw)
        for name, kw in (("pgd", {"steps": 5}), ("square", {"queries": 300}))
    ]
    result = evaluate(model, (x, y), attacks, seed=0)
    ev = Evaluation(result, y.tolist(), {})
    i = result.robust_correct.index(True)
    x_adv, pred, _, label = _attack_one(model, x[i : i + 1], y[i : i + 1], ev, i, threat)
    # PGD moves it and does not fool it: its try is shown, Square (the last attack) is not replayed.
    assert label == "pgd-5" and pred[1] == y[i]
    delta = (x_adv - x[i : i + 1]).abs()
    assert 0 < float(delta.max()) <= 0.02 + 1e-6
    assert torch.all((x_adv >= 0) & (x_adv <= 1))
