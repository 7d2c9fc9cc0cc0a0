"""PGD on a really trained small CNN: bounds, strength ordering, restarts, seeds, targets, side effects."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from advrobust.attacks import FGSM, PGD, Attack
from advrobust.errors import ConfigError, InputError
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0), ("l1", 10.0)])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_bounds_and_drop(trained_cnn: nn.Module, batch: Batch, norm: str, eps: float, loss: str) -> None:
    x, y = batch
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    x_adv = PGD(threat=threat, steps=20, loss=loss)(
        trained_cnn, x, y, generator=torch.Generator().manual_seed(0)
    )  # type: ignore[arg-type]
    assert float(threat.distance(x_adv, x).max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    clean = float(correct(trained_cnn, x, y).float().mean())
    robust = float(correct(trained_cnn, x_adv, y).float().mean())
    assert robust < clean - 0.2


def test_pgd_linf_03_breaks_a_normal_model(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    x_adv = PGD(threat=ThreatModel(eps=0.3), steps=40)(
        trained_cnn, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert float(correct(trained_cnn, x_adv, y).float().mean()) < 0.05


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_pgd_finds_at_least_what_fgsm_finds(trained_cnn: nn.Module, batch: Batch, eps: float) -> None:
    x, y = batch
    threat = ThreatModel(eps=eps)
    fgsm_ok = correct(trained_cnn, FGSM(threat=threat)(trained_cnn, x, y), y)
    pgd_ok = correct(
        trained_cnn,
        PGD(threat=threat, steps=40)(trained_cnn, x, y, generator=torch.Generator().manual_seed(0)),
        y,
    )
    assert int(pgd_ok.sum()) <= int(fgsm_ok.sum())
    assert float(pgd_ok.float().mean()) < float(fgsm_ok.float().mean())


def test_more_restarts_break_a_superset(trained_cnn: nn.Module, batch: Batch) -> None:
    # The first restart draws the same start from the same seed, and each sample keeps its best point.
    x, y = batch
    threat = ThreatModel(eps=0.08)
    one = PGD(threat=threat, steps=10, restarts=1)(
        trained_cnn, x, y, generator=torch.Generator().manual_seed(5)
    )
    three = PGD(threat=threat, steps=10, restarts=3)(
        trained_cnn, x, y, generator=torch.Generator().manual_seed(5)
    )
    fooled_one = ~correct(trained_cnn, one, y)
    fooled_three = ~correct(trained_cnn, three, y)
    assert bool((fooled_three | ~fooled_one).all())  # every sample broken by one restart stays broken
    assert int(fooled_three.sum()) >= int(fooled_one.sum())


def test_seed_reproduces_and_differs(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    attack = PGD(threat=ThreatModel(eps=0.1), steps=5)
    a = attack(trained_cnn, x, y, generator=torch.Generator().manual_seed(1))
    b = attack(trained_cnn, x, y, generator=torch.Generator().manual_seed(1))
    c = attack(trained_cnn, x, y, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_targeted_pgd_reaches_targets(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    targets = (y + 1) % 10
    x_adv = PGD(threat=ThreatModel(eps=0.3), steps=40)(
        trained_cnn, x, y, targets=targets, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        hit = float((trained_cnn(x_adv).argmax(1) == targets).float().mean())
    assert hit > 0.8
    with pytest.raises(ConfigError, match="targets equal the true labels"):
        PGD(threat=ThreatModel(eps=0.3), steps=1)(trained_cnn, x, y, targets=y)
    with pytest.raises(InputError, match="targets"):
        PGD(threat=ThreatModel(eps=0.3), steps=1)(trained_cnn, x, y, targets=targets + 10)


def test_attack_leaves_model_untouched(batch: Batch) -> None:
    x, y = batch
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
    )
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PGD(threat=ThreatModel(eps=0.1), steps=3)(model, x[:16], y[:16])
    assert model.training and model[1].training
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics untouched


def test_base_class_projects_whatever_run_returns(trained_cnn: nn.Module, batch: Batch) -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Wild(Attack):
        def run(self, model, x, y, targets, generator):  # type: ignore[no-untyped-def]
            return x + 5.0 * torch.randn_like(x)

    x, y = batch
    threat = ThreatModel(norm="l2", eps=1.0)
    out = Wild(threat=threat)(trained_cnn, x, y)
    assert bool(threat.contains(out, x).all())


def test_input_errors_surface(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    attack = PGD(threat=ThreatModel(eps=0.1), steps=1)
    with pytest.raises(InputError, match="divide by 255"):
        attack(trained_cnn, x * 255, y)
    with pytest.raises(InputError, match="10 classes"):
        attack(trained_cnn, x, y + 10)
    with pytest.raises(ConfigError, match="steps"):
        PGD(threat=ThreatModel(), steps=0)


def test_fooled_samples_leave_the_batch(
    trained_cnn: nn.Module, batch: Batch, counting: type[nn.Module]
) -> None:
    # linf 0.3 breaks nearly every sample of a normal model within a few steps: the remaining steps
    # run on what is left, so the model sees far fewer than steps x n samples.
    x, y = batch
    counted = counting(trained_cnn)
    steps = 40
    x_adv = PGD(threat=ThreatModel(eps=0.3), steps=steps)(
        counted, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert not bool(correct(trained_cnn, x_adv, y).any())
    assert counted.samples < 0.25 * steps * x.shape[0]


def test_result_of_a_sample_does_not_depend_on_its_batch(trained_cnn: nn.Module, batch: Batch) -> None:
    # Without a random start PGD is deterministic per sample, so dropping fooled samples at different
    # moments (other batch mates) must not change anyone's result: bit-identical in every split.
    x, y = batch
    attack = PGD(threat=ThreatModel(eps=0.08), steps=20, random_start=False, restarts=2)
    whole = attack(trained_cnn, x, y)
    halves = torch.cat([attack(trained_cnn, x[:77], y[:77]), attack(trained_cnn, x[77:], y[77:])])
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    shuffled = torch.empty_like(x)
    shuffled[order] = attack(trained_cnn, x[order], y[order])
    fooled = ~correct(trained_cnn, whole, y)
    assert 0.1 < float(fooled.float().mean()) < 0.9  # some leave early, some stay to the end
    assert torch.equal(whole, halves)
    assert torch.equal(whole, shuffled)


@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("eps", [0.08, 0.002])
def test_every_sample_gets_its_own_point_before_the_projection(
    trained_cnn: nn.Module, batch: Batch, restarts: int, eps: float
) -> None:
    # PGD writes each sample's best point back when the sample leaves the batch or at the end, into an
    # output it never fills with x first: ``run`` itself (before the base class projects) must return a
    # point inside the eps-ball for every sample. At eps 0.08 some samples leave early and some stay; at
    # 0.002 none is fooled, so only the final write-back fills the output.
    x, y = batch
    threat = ThreatModel(eps=eps)
    attack = PGD(threat=threat, steps=20, restarts=restarts)
    raw = attack.run(trained_cnn, x, y, None, torch.Generator().manual_seed(0))
    assert bool(threat.contains(raw, x).all())
    assert bool((raw != x).flatten(1).any(dim=1).all())  # every sample moved (a random start at least)
    fooled = float((~correct(trained_cnn, raw, y)).float().mean())
    assert (
        0.1 < fooled < 0.9 if eps == 0.08 else fooled == float((~correct(trained_cnn, x, y)).float().mean())
    )
    assert torch.equal(raw, attack(trained_cnn, x, y, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0), ("l1", 6.0)])
@pytest.mark.parametrize("random_start", [True, False])
def test_steps_written_in_place_leave_the_inputs_alone_and_match_the_plain_formula(
    trained_cnn: nn.Module, batch: Batch, norm: str, eps: float, random_start: bool
) -> None:
    # PGD writes each step and its projection into its own buffer. The caller's x must come back untouched,
    # and one step (no sample can leave after it) must equal the textbook formula computed out of place.
    from advrobust.attacks.base import input_gradient, steepest_direction

    x, y = batch
    x_before = x.clone()
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    one = PGD(threat=threat, steps=1, random_start=random_start)
    got = one.run(trained_cnn, x, y, None, torch.Generator().manual_seed(3))
    assert torch.equal(x, x_before)
    start = threat.random_start(x, torch.Generator().manual_seed(3)) if random_start else x.clone()
    grad, _, _ = input_gradient(trained_cnn, start, y, None, "ce")
    stepped = threat.project(start + one.alpha * steepest_direction(grad, norm), x, exact=False)  # type: ignore[arg-type]
    with torch.no_grad():
        fooled_start = trained_cnn(start).argmax(1) != y
        loss_start = nn.functional.cross_entropy(trained_cnn(start), y, reduction="none")
        loss_step = nn.functional.cross_entropy(trained_cnn(stepped), y, reduction="none")
    # Each sample keeps the start if it already fooled the model, else the point with the higher loss.
    keep_start = fooled_start | (loss_start >= loss_step) & (trained_cnn(stepped).argmax(1) == y)
    expected = torch.where(keep_start.reshape(-1, 1, 1, 1), start, stepped)
    assert torch.equal(got, expected)
    many = PGD(threat=threat, steps=12, restarts=2, random_start=random_start)
    many(trained_cnn, x, y, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x, x_before)


def test_run_takes_an_input_that_requires_grad(trained_cnn: nn.Module, batch: Batch) -> None:
    # ``run`` is public to subclasses and wrappers: an x still attached to a graph must work as a plain one.
    x, y = batch
    attack = PGD(threat=ThreatModel(eps=0.1), steps=3)
    plain = attack.run(trained_cnn, x, y, None, torch.Generator().manual_seed(0))
    attached = attack.run(
        trained_cnn, x.clone().requires_grad_(True), y, None, torch.Generator().manual_seed(0)
    )
    assert torch.equal(plain, attached)


def test_a_run_keeps_the_first_fooling_point_else_the_highest_loss() -> None:
    from advrobust.attacks.pgd import _Run

    x = torch.zeros(3, 1, 1, 1)
    y = torch.zeros(3, dtype=torch.long)
    best, best_loss = torch.empty_like(x), torch.full((3,), float("-inf"))
    run = _Run(x, y, None, torch.arange(3), best, best_loss, whole=True)

    def logits(fooled: list[bool]) -> torch.Tensor:  # class 1 wins where fooled
        return torch.tensor([[0.0, 1.0] if f else [1.0, 0.0] for f in fooled])

    run.keep(torch.full_like(x, 1.0), logits([False, True, False]), torch.tensor([1.0, 1.0, 1.0]))
    run.keep(torch.full_like(x, 2.0), logits([False, True, False]), torch.tensor([2.0, 5.0, float("nan")]))
    run.keep(torch.full_like(x, 3.0), logits([False, False, False]), torch.tensor([0.5, 9.0, 0.5]))
    assert run.fooled().tolist() == [False, True, False]
    found = torch.zeros(3, dtype=torch.bool)
    run.flush(found)
    # 0: the higher loss of step 2; 1: its first fooling point, final; 2: a NaN loss never wins.
    assert best.flatten().tolist() == [2.0, 1.0, 1.0]
    assert found.tolist() == [False, True, False]
    assert x.eq(0).all()  # the caller's x is never written into


def test_an_infinite_loss_without_fooling_is_not_taken_for_a_fooled_sample() -> None:
    # A half-precision DLR can divide by a denominator rounded to zero: +inf must still mean "fooled" only.
    from advrobust.attacks.pgd import _Run

    x, y = torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long)
    best, best_loss = torch.empty_like(x), torch.full((2,), float("-inf"))
    run = _Run(x, y, None, torch.arange(2), best, best_loss, whole=True)
    not_fooled = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    run.keep(torch.full_like(x, 1.0), not_fooled, torch.tensor([float("inf"), 1.0]))
    run.keep(torch.full_like(x, 2.0), not_fooled, torch.tensor([5.0, 2.0]))
    assert run.fooled().tolist() == [False, False]
    run.flush(found := torch.zeros(2, dtype=torch.bool))
    assert found.tolist() == [False, False]
    assert best.flatten().tolist() == [1.0, 2.0]  # the capped +inf stays the highest loss of sample 0
