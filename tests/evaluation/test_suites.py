"""The named suites: recipes, and the standard suite at least as strong as its strongest member."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.attacks import PGD, create_attack
from advrobust.errors import ConfigError
from advrobust.evaluation import evaluate
from advrobust.evaluation.suites import build_suite
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]


def test_standard_recipe_follows_autoattack() -> None:
    linf = build_suite("standard", ThreatModel(eps=0.3))
    assert [a.name for a in linf] == ["apgd", "apgd", "fab", "square"]
    assert linf[0].params()["loss"] == "ce" and not linf[0].params()["targeted"]
    assert linf[1].params()["loss"] == "dlr" and linf[1].params()["targeted"]
    assert linf[1].params()["n_target_classes"] == 9
    assert linf[2].params()["targeted"] and linf[3].params()["queries"] == 5000
    assert [a.name for a in build_suite("standard", ThreatModel(norm="l1", eps=10.0))] == ["apgd", "apgd"]
    # l2 runs FAB-T against the strongest rival and, on what stands, against the true class (AutoAttack's).
    l2 = build_suite("standard", ThreatModel(norm="l2", eps=2.0))
    assert [a.name for a in l2] == ["apgd", "apgd", "fab", "fab", "square"]
    assert [a.params()["rival"] for a in l2[2:4]] == ["strongest", "label"]
    assert linf[2].params()["rival"] == "strongest"
    assert [a.name for a in build_suite("quick", ThreatModel(eps=0.3))] == ["apgd"]
    with pytest.raises(ConfigError):
        build_suite("everything", ThreatModel())


def test_every_attack_of_a_suite_has_its_own_label() -> None:
    from advrobust.evaluation.results import attack_label

    labels = [attack_label(a.name, a.params()) for a in build_suite("standard", ThreatModel(eps=0.3))]
    assert labels == ["apgd-100", "apgd-t-dlr-100", "fab-t-100", "square"]
    l2 = build_suite("standard", ThreatModel(norm="l2", eps=2.0))
    labels = [attack_label(a.name, a.params()) for a in l2]
    assert labels == ["apgd-100", "apgd-t-dlr-100", "fab-t-100", "fab-t-label-100", "square"]
    untargeted = create_attack("apgd", threat=ThreatModel(eps=0.3), loss="dlr", steps=100)
    assert attack_label(untargeted.name, untargeted.params()) == "apgd-dlr-100"  # not APGD-T's column
    # Untargeted FAB linearises against every class: its rival setting does nothing, so no second name.
    plain_fab = create_attack("fab", threat=ThreatModel(eps=0.3), steps=100, rival="label")
    assert attack_label(plain_fab.name, plain_fab.params()) == "fab-100"
    assert (
        attack_label("bpda", {"attack": {"name": "pgd", "steps": 40, "loss": "margin"}})
        == "bpda(pgd-margin-40)"
    )


def test_standard_suite_beats_pgd(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    data = (x[:64], y[:64])
    threat = ThreatModel(eps=0.1)
    pgd = evaluate(trained_cnn, data, [PGD(threat=threat, steps=40)])
    standard = evaluate(trained_cnn, data, "standard", threat=threat)
    assert standard.robust.value <= pgd.robust.value
    assert standard.robust.value < standard.clean.value
    assert [a.name for a in standard.attacks] == ["apgd", "apgd", "fab", "square"]
    assert all(a.violations == 0 for a in standard.attacks)
