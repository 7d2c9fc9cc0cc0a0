"""BPDA and EOT: they break input-transform defenses that plain attacks cannot, on a trained MNIST CNN."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from advrobust.attacks import APGD, BPDA, EOT, FGSM, PGD, Attack, adapt, create_attack
from advrobust.attacks.adaptive import BPDAModel, EOTModel
from advrobust.defenses import BitDepth, GaussianNoise, InputTransformDefense
from advrobust.errors import ConfigError
from advrobust.evaluation import evaluate
from advrobust.evaluation.audit import audit
from advrobust.evaluation.suites import build_suite
from advrobust.threat import ThreatModel

Batch = tuple[Tensor, Tensor]
THREAT = ThreatModel(eps=0.1)


def robust(model: nn.Module, data: Batch, attack: Attack) -> float:
    return evaluate(model, data, [attack], seed=0).robust.value


@pytest.fixture(scope="module")
def undefended(trained_cnn: nn.Module, batch: Batch) -> float:
    return robust(trained_cnn, batch, PGD(threat=THREAT, steps=20))


@pytest.mark.parametrize(
    ("transforms", "n", "slack"), [(["bitdepth:4"], 200, 0.05), (["jpeg:75"], 100, 0.15)]
)
def test_bpda_breaks_what_plain_pgd_cannot(
    trained_cnn: nn.Module, batch: Batch, undefended: float, transforms: list[str], n: int, slack: float
) -> None:
    x, y = batch[0][:n], batch[1][:n]
    defense = InputTransformDefense(trained_cnn, transforms).eval()
    pgd = PGD(threat=THREAT, steps=20)
    naive = robust(defense, (x, y), pgd)
    adaptive = robust(defense, (x, y), BPDA(attack=pgd))
    reference = robust(trained_cnn, (x, y), pgd)
    assert naive > 0.85  # the masked gradient fools plain PGD
    assert naive > adaptive + 0.3
    assert adaptive <= reference + slack  # close to the undefended model's robust accuracy
    assert 0.2 < undefended < 0.6


def test_audit_flags_the_defense(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch[0][:60], batch[1][:60]
    defense = InputTransformDefense(trained_cnn, [BitDepth(bits=4)]).eval()
    report = audit(defense, x, y, THREAT, steps=10, square_queries=200)
    statuses = {c.name: c.status for c in report.checks}
    assert report.status == "fail"
    assert statuses["gradients"] == "fail"
    assert "BPDA" in report.verdict


def test_eot_beats_a_single_draw_on_a_random_defense(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch[0][:100], batch[1][:100]
    defense = InputTransformDefense(trained_cnn, [GaussianNoise(sigma=0.3)]).eval()
    pgd = PGD(threat=THREAT, steps=20)
    single = robust(defense.manual_seed(0), (x, y), pgd)
    averaged = robust(defense.manual_seed(0), (x, y), EOT(attack=pgd, samples=10))
    assert single > averaged + 0.1


def test_bpda_and_eot_compose_on_a_random_non_differentiable_defense(
    trained_cnn: nn.Module, batch: Batch
) -> None:
    x, y = batch[0][:100], batch[1][:100]
    defense = InputTransformDefense(trained_cnn, ["noise:0.2", "bitdepth:3"]).eval()
    # APGD: its adaptive step size copes with noisy gradients better than PGD's fixed one.
    apgd = APGD(threat=THREAT, steps=20)
    naive = robust(defense.manual_seed(1), (x, y), apgd)
    both = robust(defense.manual_seed(1), (x, y), BPDA(attack=EOT(attack=apgd, samples=5)))
    reversed_order = robust(defense.manual_seed(1), (x, y), EOT(attack=BPDA(attack=apgd), samples=5))
    assert naive > 0.85
    assert naive > both + 0.3 and naive > reversed_order + 0.3


def test_wrappers_take_the_threat_and_report_the_wrapped_attack() -> None:
    pgd = PGD(threat=THREAT, steps=7)
    bpda = BPDA(attack=pgd)
    eot = EOT(attack=bpda, samples=3)
    assert bpda.threat == THREAT and eot.threat == THREAT
    assert eot.params() == {
        "attack": {"name": "bpda", "attack": {"name": "pgd", **pgd.params()}},
        "samples": 3,
    }
    assert eot.describe().startswith("eot(samples=3, bpda(pgd(steps=7")
    built = create_attack("eot", threat=THREAT, samples=4)
    assert isinstance(built, EOT) and isinstance(built.inner, PGD) and built.inner.threat == THREAT
    with pytest.raises(ConfigError):
        BPDA(attack=pgd, threat=THREAT.with_eps(0.2))
    with pytest.raises(ConfigError):
        BPDA()
    with pytest.raises(ConfigError):
        EOT(attack=pgd, samples=0)


def test_bpda_is_the_plain_attack_on_a_differentiable_model(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch[0][:32], batch[1][:32]
    pgd = PGD(threat=THREAT, steps=5)
    plain = pgd(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    wrapped = BPDA(attack=pgd)(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, wrapped)

    class Opaque(nn.Module):
        differentiable = False

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = trained_cnn(torch.round(x))
            return out

    with pytest.raises(ConfigError, match="bpda_forward"):
        BPDA(attack=pgd)(Opaque(), x, y)


def test_eot_model_averages_independent_draws(trained_cnn: nn.Module, batch: Batch) -> None:
    x = batch[0][:4]
    defense = InputTransformDefense(trained_cnn, [GaussianNoise(sigma=0.3)]).manual_seed(2)
    draws = [defense(x) for _ in range(6)]
    expected = torch.stack(draws).mean(dim=0)
    averaged = EOTModel(defense.manual_seed(2), 6)(x)
    assert torch.allclose(averaged, expected, atol=1e-5)
    assert not EOTModel(defense, 6).randomized and BPDAModel(defense).randomized


def test_adapt_follows_the_declarations(trained_cnn: nn.Module) -> None:
    pgd = PGD(threat=THREAT)
    apgd = APGD(threat=THREAT)
    square = create_attack("square", threat=THREAT)
    assert adapt(pgd, trained_cnn) is pgd
    masked = InputTransformDefense(trained_cnn, ["jpeg:75"])
    noisy = InputTransformDefense(trained_cnn, ["noise:0.1"])
    both = InputTransformDefense(trained_cnn, ["noise:0.1", "bitdepth:4"])
    assert isinstance(adapt(pgd, masked), BPDA)
    eot = adapt(pgd, noisy, samples=7)
    assert isinstance(eot, EOT) and eot.samples == 7
    native = adapt(apgd, noisy, samples=7)
    assert isinstance(native, APGD) and native.eot_iter == 7  # APGD averages per-draw gradients itself
    wrapped = adapt(apgd, both, samples=7)
    assert isinstance(wrapped, BPDA) and isinstance(wrapped.inner, APGD) and wrapped.inner.eot_iter == 7
    assert adapt(square, both) is square


def test_adaptive_suite_is_the_standard_recipe_adapted(trained_cnn: nn.Module, batch: Batch) -> None:
    standard = build_suite("standard", THREAT)
    masked = InputTransformDefense(trained_cnn, [BitDepth(bits=4)]).eval()
    suite = build_suite("adaptive", THREAT, model=masked)
    assert [a.name for a in suite] == ["bpda", "bpda", "bpda", "square"]
    assert [a.inner.params() for a in suite if isinstance(a, BPDA)] == [a.params() for a in standard[:3]]
    assert build_suite("adaptive", THREAT, model=trained_cnn) == standard
    random_suite = build_suite("adaptive", THREAT, model=InputTransformDefense(trained_cnn, ["noise:0.1"]))
    assert [(a.name, getattr(a, "loss", None), getattr(a, "eot_iter", None)) for a in random_suite] == [
        ("apgd", "ce", 20),
        ("apgd", "dlr", 20),
    ]
    with pytest.raises(ConfigError, match="model"):
        build_suite("adaptive", THREAT)
    # At eps 0.2 the undefended model has no robust sample left, so the cascade stays cheap.
    x, y, strong = batch[0][:16], batch[1][:16], THREAT.with_eps(0.2)
    result = evaluate(masked, (x, y), "adaptive", threat=strong)
    naive = evaluate(masked, (x, y), "quick", threat=strong)
    assert naive.robust.value > 0.8 and result.robust.value < 0.1  # random starts alone break a few
    assert result.attacks[0].name == "bpda" and result.attacks[0].fooled >= 14


def test_evaluate_warns_when_no_gradient_attack_adapts_to_the_model(
    trained_cnn: nn.Module, batch: Batch
) -> None:
    """A non-adaptive number on a defended model is flagged as an upper bound, in the result itself."""
    data = (batch[0][:16], batch[1][:16])
    pgd = PGD(threat=THREAT, steps=2)
    masked = InputTransformDefense(trained_cnn, [BitDepth(bits=4)]).eval()
    noisy = InputTransformDefense(trained_cnn, [GaussianNoise(sigma=0.1)]).eval()

    plain = evaluate(masked, data, [pgd, FGSM(threat=THREAT)]).meta
    assert plain["upper_bound"] is True
    assert "non-differentiable" in plain["adaptive_note"] and "BPDA" in plain["adaptive_note"]
    assert "pgd-2" in plain["adaptive_note"] and "--suite adaptive" in plain["adaptive_note"]
    random = evaluate(noisy, data, [APGD(threat=THREAT, steps=2)]).meta
    assert "randomness" in random["adaptive_note"] and "EOT" in random["adaptive_note"]

    # One adapted gradient attack in the worst case is enough; an undefended model needs none.
    for model, attacks in (
        (masked, [pgd, adapt(pgd, masked)]),
        (masked, [BPDA(attack=pgd)]),
        (noisy, [APGD(threat=THREAT, steps=2, eot_iter=4)]),
        (noisy, [EOT(attack=pgd, samples=4)]),
        (trained_cnn, [pgd]),
    ):
        meta = evaluate(model, data, attacks).meta
        assert "adaptive_note" not in meta and "upper_bound" not in meta
