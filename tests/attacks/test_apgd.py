"""APGD on a really trained small CNN: schedule, bounds, strength against PGD, APGD-T, scale invariance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advrobust.attacks import APGD, PGD, apgd_checkpoints, create_attack
from advrobust.attacks.apgd import momentum_step
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Scaled(nn.Module):
    """The same classifier with logits times ``factor``: a saturated softmax, as in distillation defenses."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model = model
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x) * self.factor
        return out


@pytest.fixture(scope="module")
def apgd_ce_01(trained_cnn: nn.Module, batch: Batch) -> torch.Tensor:
    """APGD-CE with the paper's 100 steps at linf eps 0.1, shared by the strength comparisons."""
    x, y = batch
    return APGD(threat=ThreatModel(eps=0.1))(trained_cnn, x, y, generator=seeded())


def test_checkpoints_follow_the_formula_by_hand() -> None:
    # p: 0, .22, .41 (+.19), .57 (+.16), .70 (+.13), .80 (+.10), .87 (+.07), .93 (+.06), .99 (+.06); 1.05 > 1.
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    # ceil(p * 1000) with exact p; 0.41 * 1000 must not become 411 by floating-point error.
    assert apgd_checkpoints(1000) == [0, 220, 410, 570, 700, 800, 870, 930, 990]
    assert apgd_checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]  # ceil(2.2), ceil(4.1), ...; repeats dropped
    assert apgd_checkpoints(1) == [0, 1]


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0), ("l1", 10.0)])
def test_apgd_bounds_and_drop(trained_cnn: nn.Module, batch: Batch, norm: str, eps: float) -> None:
    x, y = batch
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    x_adv = APGD(threat=threat, steps=10)(trained_cnn, x, y, generator=seeded())
    assert float(threat.distance(x_adv, x).max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    clean = float(correct(trained_cnn, x, y).float().mean())
    robust = float(correct(trained_cnn, x_adv, y).float().mean())
    assert robust < clean - 0.2


def test_apgd_ce_at_least_as_strong_as_pgd(
    trained_cnn: nn.Module, batch: Batch, apgd_ce_01: torch.Tensor
) -> None:
    x, y = batch
    pgd = PGD(threat=ThreatModel(eps=0.1), steps=40)(trained_cnn, x, y, generator=seeded())
    clean = int(correct(trained_cnn, x, y).sum())
    pgd_left = int(correct(trained_cnn, pgd, y).sum())
    apgd_left = int(correct(trained_cnn, apgd_ce_01, y).sum())
    assert apgd_left <= pgd_left < clean


def test_l1_apgd_beats_l1_pgd(trained_cnn: nn.Module, batch: Batch) -> None:
    # Sparse, box-aware steps with adaptive sparsity: far stronger than PGD's fixed-sparsity l1 step.
    x, y = batch[0][:100], batch[1][:100]
    threat = ThreatModel(norm="l1", eps=10.0)
    pgd = PGD(threat=threat, steps=40)(trained_cnn, x, y, generator=seeded())
    apgd = APGD(threat=threat, steps=30)(trained_cnn, x, y, generator=seeded())
    assert (
        float(correct(trained_cnn, apgd, y).float().mean())
        < float(correct(trained_cnn, pgd, y).float().mean()) - 0.1
    )


def test_apgd_t_at_least_as_strong_as_apgd_ce(
    trained_cnn: nn.Module, batch: Batch, apgd_ce_01: torch.Tensor
) -> None:
    x, y = batch
    apgd_t = APGD(threat=ThreatModel(eps=0.1), steps=50, loss="dlr", targeted=True, n_target_classes=3)
    x_adv = apgd_t(trained_cnn, x, y, generator=seeded())
    assert float(ThreatModel(eps=0.1).distance(x_adv, x).max()) <= 0.1 + 1e-6
    assert int(correct(trained_cnn, x_adv, y).sum()) <= int(correct(trained_cnn, apgd_ce_01, y).sum())


def test_targeted_apgd_reaches_given_targets(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch[0][:100], batch[1][:100]
    targets = (y + 1) % 10
    for loss in ("ce", "dlr"):
        x_adv = APGD(threat=ThreatModel(eps=0.3), steps=40, loss=loss)(  # type: ignore[arg-type]
            trained_cnn, x, y, targets=targets, generator=seeded()
        )
        with torch.no_grad():
            hit = float((trained_cnn(x_adv).argmax(1) == targets).float().mean())
        assert hit > 0.8, loss


def test_scaled_logits_defeat_ce_but_not_dlr(trained_cnn: nn.Module, batch: Batch) -> None:
    # x100 logits saturate the softmax: CE's gradient underflows to zero, DLR is scale invariant.
    x, y = batch[0][:100], batch[1][:100]
    scaled = Scaled(trained_cnn, 100.0)
    threat = ThreatModel(eps=0.1)

    def robust(model: nn.Module, loss: str) -> float:
        x_adv = APGD(threat=threat, steps=20, loss=loss)(model, x, y, generator=seeded())  # type: ignore[arg-type]
        return float(correct(trained_cnn, x_adv, y).float().mean())

    ce_plain, ce_scaled = robust(trained_cnn, "ce"), robust(scaled, "ce")
    dlr_plain, dlr_scaled = robust(trained_cnn, "dlr"), robust(scaled, "dlr")
    assert ce_scaled > ce_plain + 0.3  # gradient masking by scale fools CE
    assert dlr_scaled <= dlr_plain + 0.02
    assert dlr_scaled < ce_scaled - 0.3


def test_seed_reproduces_and_differs(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    attack = APGD(threat=ThreatModel(eps=0.1), steps=5)
    a = attack(trained_cnn, x, y, generator=seeded(1))
    b = attack(trained_cnn, x, y, generator=seeded(1))
    c = attack(trained_cnn, x, y, generator=seeded(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_more_restarts_break_a_superset(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    threat = ThreatModel(eps=0.08)
    one = APGD(threat=threat, steps=10, restarts=1)(trained_cnn, x, y, generator=seeded(5))
    three = APGD(threat=threat, steps=10, restarts=3)(trained_cnn, x, y, generator=seeded(5))
    fooled_one, fooled_three = ~correct(trained_cnn, one, y), ~correct(trained_cnn, three, y)
    assert bool((fooled_three | ~fooled_one).all())
    assert int(fooled_three.sum()) >= int(fooled_one.sum())


def test_eot_averages_over_draws(trained_cnn: nn.Module, batch: Batch, counting: type[nn.Module]) -> None:
    x, y = batch[0][:50], batch[1][:50]
    threat = ThreatModel(eps=0.1)
    once, twice = counting(trained_cnn), counting(trained_cnn)
    plain = APGD(threat=threat, steps=5)(once, x, y, generator=seeded(), check=False)
    averaged = APGD(threat=threat, steps=5, eot_iter=2)(twice, x, y, generator=seeded(), check=False)
    # On a deterministic model the average of identical draws is the draw itself.
    assert torch.equal(plain, averaged)
    assert twice.samples == 2 * once.samples  # eot_iter passes for the clean check and per point


class _Flicker(nn.Module):
    """A "random" model whose draws alternate: odd calls put class y + 1 on top (by 10), even ones class y
    (by 30), so any one draw may misclassify while the average (15 vs 5) does not."""

    randomized = True

    def __init__(self, y: torch.Tensor) -> None:
        super().__init__()
        self.y, self.calls, self.samples = y, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.samples += x.shape[0]
        y = self.y[: x.shape[0]]
        top = (y + 1) % 10 if self.calls % 2 else y
        logits = torch.nn.functional.one_hot(top, 10).to(x.dtype) * (10.0 if self.calls % 2 else 30.0)
        return logits + 0 * x.flatten(1).sum(dim=1, keepdim=True)


def test_eot_judges_the_clean_input_on_averaged_draws(batch: Batch) -> None:
    x, y = batch[0][:20], batch[1][:20]
    threat = ThreatModel(eps=0.1)
    single = _Flicker(y)
    APGD(threat=threat, steps=3)(single, x, y, generator=seeded(), check=False)
    assert single.samples == 20  # its one clean draw misclassified everything: nothing attacked
    averaged = _Flicker(y)
    APGD(threat=threat, steps=3, eot_iter=2)(averaged, x, y, generator=seeded(), check=False)
    assert averaged.samples > 2 * 20  # the average is correct everywhere: every sample is attacked


def test_samples_fooled_at_x_come_back_unchanged(
    trained_cnn: nn.Module, batch: Batch, counting: type[nn.Module]
) -> None:
    x = batch[0][:50]
    with torch.no_grad():
        wrong = (trained_cnn(x).argmax(1) + 1) % 10  # labels no prediction matches: all "misclassified"
    counted = counting(trained_cnn)
    x_adv = APGD(threat=ThreatModel(eps=0.3), steps=100)(counted, x, wrong, check=False)
    assert torch.equal(x_adv, x)
    assert counted.samples == 50  # only the clean pass: nothing left to attack


def test_registered_and_validated(trained_cnn: nn.Module, batch: Batch) -> None:
    attack = create_attack("apgd", threat=ThreatModel(eps=0.1), steps=3, loss="dlr")
    assert isinstance(attack, APGD) and attack.describe().startswith("apgd(steps=3")
    assert attack.params()["rho"] == 0.75 and attack.params()["alpha"] == 0.75
    for bad in ({"steps": 0}, {"restarts": 0}, {"rho": 1.5}, {"alpha": 0.0}, {"eot_iter": 0}):
        with pytest.raises(ConfigError):
            APGD(threat=ThreatModel(), **bad)  # type: ignore[arg-type]
    x, y = batch
    with pytest.raises(ConfigError, match="needs targets"):
        APGD(threat=ThreatModel(), steps=1, loss="dlr-targeted")(trained_cnn, x[:4], y[:4])
    assert not math.isnan(float(attack(trained_cnn, x[:4], y[:4]).sum()))


def test_fooled_samples_leave_the_run_without_changing_the_others(
    trained_cnn: nn.Module, batch: Batch, counting: type[nn.Module]
) -> None:
    # APGD's state is per sample: dropping fooled samples at checkpoints must leave every other sample's
    # trajectory as it was. A sample's random start depends on its position, so compare batches whose
    # robust samples sit in the same positions: the batch alone vs the batch followed by extra samples.
    x, y = batch
    attack = APGD(threat=ThreatModel(eps=0.1), steps=50)
    alone = attack(trained_cnn, x[:100], y[:100], generator=seeded(3))
    joined = attack(trained_cnn, x, y, generator=seeded(3))
    fooled = ~correct(trained_cnn, alone, y[:100])
    assert 0.1 < float(fooled.float().mean()) < 0.9
    # The first 100 samples draw the same starts only if the clean filter keeps the same rows before
    # them, which holds: the filter keeps order, and the extra samples come after.
    assert torch.equal(alone, joined[:100])

    counted = counting(trained_cnn)
    strong = APGD(threat=ThreatModel(eps=0.3), steps=100)(counted, x, y, generator=seeded(0))
    assert not bool(correct(trained_cnn, strong, y).any())
    assert counted.samples < 0.3 * 100 * x.shape[0]


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_a_step_built_in_place_matches_the_formula_and_leaves_the_inputs_alone(
    trained_cnn: nn.Module, batch: Batch, norm: str, eps: float
) -> None:
    # APGD builds z = P(x0 + eta sign(g)) and x1 = P(x0 + 1 (z - x0) + 0 (x0 - x0)) in its direction's
    # buffer: one step must equal the formula computed out of place, and x must come back untouched.
    from advrobust.attacks.base import input_gradient, steepest_direction

    x, y = batch
    keep = correct(trained_cnn, x, y)  # samples fooled at x are not attacked: leave them out here
    x, y = x[keep], y[keep]
    x_before = x.clone()
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    got = APGD(threat=threat, steps=1).run(trained_cnn, x, y, None, seeded(5))
    assert torch.equal(x, x_before)
    start = threat.random_init(x, seeded(5))
    grad, logits, loss0 = input_gradient(trained_cnn, start, y, None, "ce")
    z = threat.project(start + 2 * eps * steepest_direction(grad, norm), x, exact=False)  # type: ignore[arg-type]
    stepped = threat.project(start + 1.0 * (z - start) + 0.0 * (start - start), x, exact=False)
    _, logits1, loss1 = input_gradient(trained_cnn, stepped, y, None, "ce")
    fooled0, fooled1 = logits.argmax(1) != y, logits1.argmax(1) != y
    take_step = ~fooled0 & (fooled1 | (loss1 > loss0))
    assert torch.equal(got, torch.where(take_step.reshape(-1, 1, 1, 1), stepped, start))
    for attack in (
        APGD(threat=threat, steps=20, restarts=2),
        APGD(threat=threat, loss="dlr", targeted=True, n_target_classes=2, steps=10),
        APGD(threat=ThreatModel(norm="l1", eps=8.0), steps=10),
    ):
        attack(trained_cnn, x, y, generator=seeded(6))
        assert torch.equal(x, x_before)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0), ("l1", 10.0)])
@pytest.mark.parametrize("a", [1.0, 0.75])
def test_the_momentum_step_equals_the_formula_computed_out_of_place(norm: str, eps: float, a: float) -> None:
    # APGD's update writes into the direction's buffer: bit for bit the paper's formula, momentum included.
    gen = torch.Generator().manual_seed(8)
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    x = torch.rand(64, 1, 28, 28, generator=gen)
    x_prev = threat.project(x + 0.3 * torch.randn(64, 1, 28, 28, generator=gen), x)
    x_cur = threat.project(x + 0.3 * torch.randn(64, 1, 28, 28, generator=gen), x)
    step = torch.randn(64, 1, 28, 28, generator=gen)
    eta = torch.rand(64, generator=gen) * eps
    z = threat.project(x_cur + eta.reshape(-1, 1, 1, 1) * step, x, exact=False)
    expected = threat.project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), x, exact=False)
    inputs = [t.clone() for t in (x, x_cur, x_prev)]
    got = momentum_step(threat, x, x_cur, x_prev, step.clone(), eta, a)
    assert torch.equal(got, expected)
    for before, after in zip(inputs, (x, x_cur, x_prev), strict=True):
        assert torch.equal(before, after)


def test_run_takes_an_input_that_requires_grad(trained_cnn: nn.Module, batch: Batch) -> None:
    # ``run`` is public to subclasses and wrappers: an x still attached to a graph must work as a plain one.
    x, y = batch
    attack = APGD(threat=ThreatModel(eps=0.1), steps=5)
    plain = attack.run(trained_cnn, x, y, None, seeded(0))
    attached = attack.run(trained_cnn, x.clone().requires_grad_(True), y, None, seeded(0))
    assert torch.equal(plain, attached)


def test_a_restart_keeps_the_jump_to_the_best_point_as_momentum(
    trained_cnn: nn.Module, batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in the reference implementation: after a checkpoint sends a sample back to its best point, the next
    # step's momentum is (best point - last iterate), not zero.
    import advrobust.attacks.apgd as apgd_module

    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    step = apgd_module.momentum_step

    def recording(*args: object) -> torch.Tensor:
        x_cur, x_prev = args[2], args[3]
        assert isinstance(x_cur, torch.Tensor) and isinstance(x_prev, torch.Tensor)
        out = step(*args)  # type: ignore[arg-type]
        calls.append((x_cur.clone(), x_prev.clone(), out.clone()))
        return out

    monkeypatch.setattr(apgd_module, "momentum_step", recording)
    x, y = batch[0][:40], batch[1][:40]
    steps = 20
    # rho = 1: a sample restarts at a checkpoint unless every step since the last one raised its loss.
    APGD(threat=ThreatModel(eps=0.01), steps=steps, rho=1.0)(
        trained_cnn, x, y, generator=seeded(), check=False
    )
    restarted = 0
    for c in apgd_checkpoints(steps)[1:]:
        if c >= len(calls):
            break
        before_cur, _, new = calls[c - 1]
        after_cur, after_prev, _ = calls[c]
        if after_cur.shape != new.shape:
            continue  # fooled samples left the batch at this checkpoint
        moved = (after_cur != new).flatten(1).any(dim=1)  # sent back to their best point
        restarted += int(moved.sum())
        assert torch.equal(after_prev, before_cur)
    assert restarted > 0
