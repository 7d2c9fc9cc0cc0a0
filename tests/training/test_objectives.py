"""The adversarial objectives: each makes the model robust, crafts points inside the threat model, runs its
attack in the model mode asked for, and validates its hyperparameters."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from advrobust.data import ImageDataset
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel, project_delta
from advrobust.training import (
    FastAT,
    FreeAT,
    TrainConfig,
    create_objective,
    list_objectives,
    objective_options,
    train,
)

from .conftest import THREAT, Trained, clean_and_robust, small_cnn

ADVERSARIAL = ["pgd-at", "fast-at", "trades", "mart", "free-at"]


def test_all_objectives_are_registered() -> None:
    assert set(list_objectives()) >= {"standard", *ADVERSARIAL}
    for name in ADVERSARIAL:
        assert "threat" in objective_options(name)


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_objective_raises_robust_accuracy_well_above_standard_training(
    name: str, trained_with: Trained, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    _, base_robust = clean_and_robust(trained_with("standard")[0], batch)
    model, result = trained_with(name)
    clean, robust = clean_and_robust(model, batch)
    assert robust >= base_robust + 0.15, (name, clean, robust, base_robust)
    assert clean >= 0.8, (name, clean)
    assert result.stopped is None
    last = result.history[-1]
    assert last["train_robust_accuracy"] == last["train_accuracy"]
    assert 0 < last["train_clean_accuracy"] <= 1
    if name == "fast-at":
        assert "guard_robust_accuracy" in last  # the guard ran, and did not fire


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10)
    )


# (attack forwards, training forwards) per call of loss() with the defaults.
FORWARDS = {"pgd-at": (7, 1), "fast-at": (1, 1), "trades": (11, 2), "mart": (10, 2)}


@pytest.mark.parametrize("name", list(FORWARDS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_attack_mode_sets_the_model_mode_of_the_attack_forwards(
    name: str, mode: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:16], batch[1][:16]
    model = _bn_model().train()
    modes: list[bool] = []
    model[1].register_forward_hook(lambda module, _i, _o: modes.append(module.training))
    objective = create_objective(name, threat=THREAT, attack_mode=mode)
    loss, logits = objective.loss(model, x, y, generator=torch.Generator().manual_seed(0))
    attack, training = FORWARDS[name]
    assert len(modes) == attack + training
    assert modes[attack:] == [True] * training  # the loss itself is always computed in train mode
    assert modes[:attack] == [mode == "train"] * attack
    assert model.training and model[1].training  # restored
    assert loss.dim() == 0 and loss.requires_grad and logits.shape == (16, 10)
    # Batch-norm statistics moved once per train-mode forward: with "eval", never for the attack.
    assert int(model[1].num_batches_tracked) == training + (attack if mode == "train" else 0)


@pytest.mark.parametrize("threat", [THREAT, ThreatModel(norm="l2", eps=1.5)], ids=["linf", "l2"])
@pytest.mark.parametrize("name", ADVERSARIAL)
def test_training_points_lie_inside_the_threat_model(
    name: str, threat: ThreatModel, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:32], batch[1][:32]
    model = small_cnn().train()
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()) if m.training else None)
    objective = create_objective(name, threat=threat)
    for _ in range(2):  # twice: Free-AT moves its perturbation after the first backward
        loss, _ = objective.loss(model, x, y, generator=torch.Generator().manual_seed(0))
        loss.backward()
    adversarial = [s for s in seen if not torch.equal(s, x)]
    assert adversarial, "no training forward saw a perturbed input"
    for point in adversarial:
        assert bool(threat.contains(point, x, tol=1e-6).all())
        assert float((point - x).abs().max()) > 0


def test_fast_at_takes_its_gradient_at_an_unclipped_start_as_the_papers_code(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    # On saturated pixels a start clipped to [0, 1] makes every FGSM point the same corner; the paper's
    # unclipped start keeps them random, which is what prevents catastrophic overfitting on MNIST.
    x, y = batch[0][:16], batch[1][:16]
    model = small_cnn().eval()
    attack_inputs: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args: attack_inputs.append(args[0].detach().clone()))
    points = {}
    for clip in (False, True):
        objective = create_objective("fast-at", threat=THREAT, clip_start=clip, attack_mode="eval")
        attack_inputs.clear()
        objective.loss(model, x, y, generator=torch.Generator().manual_seed(0))
        start, final = attack_inputs[0], attack_inputs[-1]
        below = float(start.min())
        assert (below < 0) if not clip else (below >= 0)
        assert bool(THREAT.contains(final, x, tol=1e-6).all())
        points[clip] = final
    saturated = (x == 0) | (x == 1)
    # The clipped variant lands on x or the eps corner at every saturated pixel; the reference does not.
    changed = (points[False] - points[True]).abs()[saturated]
    assert float((changed > 1e-6).float().mean()) > 0.2


def test_fast_at_prior_start_starts_each_sample_from_its_last_perturbation(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = batch[0][:16], batch[1][:16]
    model = small_cnn().eval()
    inputs: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    objective = create_objective("fast-at", threat=THREAT, prior_start=True)
    assert objective.alpha == pytest.approx(0.5 * THREAT.eps)  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(0)
    objective.loss(model, x, y, generator=gen, index=torch.arange(100, 116))  # type: ignore[call-arg]
    kept = inputs[-1] - x  # the training forward runs at the FGSM point
    assert bool(THREAT.contains(inputs[-1], x, tol=1e-6).all())

    # Positions 100..107 come back (their perturbation is the start); 0..7 are new (the uniform draw).
    def start_at(obj: object, index: torch.Tensor) -> torch.Tensor:
        inputs.clear()
        obj.loss(model, x, y, generator=torch.Generator().manual_seed(1), index=index)  # type: ignore[attr-defined]
        return inputs[0] - x

    index = torch.cat([torch.arange(100, 108), torch.arange(0, 8)])
    start = start_at(objective, index)
    unit = kept.flatten(1).abs().amax(dim=1).view(-1, 1, 1, 1) / 127  # the int8 store's resolution
    assert bool(((start[:8] - kept[:8]).abs() <= unit[:8] / 2 + 1e-6).all())
    fresh = start[8:]
    assert float(fresh.abs().max()) <= THREAT.eps + 1e-6
    assert float((fresh - kept[8:]).abs().mean()) > THREAT.eps / 4  # not the kept points
    assert float((x[8:] + fresh).min()) < 0  # Wong et al.'s unclipped uniform start
    # The kept perturbations survive a checkpoint round trip; load_state_dict({}) forgets them.
    other = create_objective("fast-at", threat=THREAT, prior_start=True)
    other.load_state_dict(objective.state_dict())  # type: ignore[attr-defined]
    assert torch.equal(start_at(other, index)[:8], start_at(objective, index)[:8])
    other.load_state_dict({})  # type: ignore[attr-defined]
    assert float((start_at(other, index)[:8] - kept[:8]).abs().mean()) > THREAT.eps / 4
    with pytest.raises(ConfigError, match="index"):
        objective.loss(model, x, y, generator=gen)
    with pytest.raises(ConfigError, match="integer"):
        objective.loss(model, x, y, generator=gen, index=torch.ones(16, dtype=torch.bool))  # type: ignore[call-arg]


@pytest.mark.parametrize("prior_start", [False, True], ids=["uniform", "prior"])
def test_fast_at_prior_reg_adds_the_squared_logit_gap_to_the_start(
    prior_start: bool, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    import torch.nn.functional as F

    x, y = batch[0][:16], batch[1][:16]
    model = _bn_model().train()
    seen: list[tuple[bool, torch.Tensor]] = []
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].detach().clone())))
    index = torch.arange(16)
    extra = {"index": index} if prior_start else {}
    with pytest.raises(ConfigError, match="prior_reg"):
        FastAT(threat=THREAT, prior_reg=-1.0)
    plain = FastAT(threat=THREAT, prior_start=prior_start)
    seen.clear()
    loss, logits = plain.loss(model, x, y, generator=torch.Generator().manual_seed(0), **extra)
    assert len(seen) == 2  # no forward at the start without the regularizer
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(logits.detach(), y)), rel=1e-6)

    objective = FastAT(threat=THREAT, prior_start=prior_start, prior_reg=10.0)
    first = objective.loss(model, x, y, generator=torch.Generator().manual_seed(0), **extra)[0]
    kept = seen[-2][1] - x  # the FGSM point of that call
    seen.clear()
    # The second call: with prior_start its start is the kept perturbation, not a fresh draw.
    loss, _ = objective.loss(model, x, y, generator=torch.Generator().manual_seed(1), **extra)
    assert first.requires_grad
    start, adv = seen[0][1], seen[1][1]  # the attack's gradient point, the FGSM point
    if prior_start:
        unit = kept.flatten(1).abs().amax(dim=1).view(-1, 1, 1, 1) / 127
        assert bool(((start - x - kept).abs() <= unit / 2 + 1e-6).all())
    # One more forward, in train mode, at the start brought inside the ball and the bounds.
    assert len(seen) == 3 and seen[2][0]
    at = seen[2][1]
    assert torch.allclose(at, THREAT.project(start, x)) and bool(THREAT.contains(at, x, tol=1e-6).all())
    assert float((at - adv).abs().max()) > 0
    # The loss and its weight gradients are those of CE(f(adv)) + 10 * MSE(f(adv), f(start)), the gradient
    # flowing through both ends of the gap (as in the paper's code), not through f(adv) alone.
    params = list(model.parameters())
    got = torch.autograd.grad(loss, params)
    expected = F.cross_entropy(model(adv), y) + 10.0 * F.mse_loss(model(adv), model(at))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    for g, e in zip(got, torch.autograd.grad(expected, params), strict=True):
        assert torch.allclose(g, e, rtol=1e-3, atol=1e-5)
    one_end = F.cross_entropy(model(adv), y) + 10.0 * F.mse_loss(model(adv), model(at).detach())
    differs = [
        not torch.allclose(g, e, rtol=1e-3, atol=1e-5)
        for g, e in zip(got, torch.autograd.grad(one_end, params), strict=True)
    ]
    assert any(differs)


def test_fast_at_prior_start_keeps_no_zero_or_nan_perturbation() -> None:
    from advrobust.training.fast_at import _Prior

    prior = _Prior()
    delta = torch.full((3, 1, 2, 2), 0.05)
    delta[1] = 0.0
    delta[2, 0, 0, 0] = float("nan")
    prior.keep(torch.tensor([0, 1, 2]), delta)
    assert prior.seen is not None and prior.seen.tolist() == [True, False, False]
    x, fallback = torch.full((3, 1, 2, 2), 0.5), torch.full((3, 1, 2, 2), 0.7)
    start = prior.start(torch.tensor([0, 1, 2]), x, fallback)
    assert torch.allclose(start[0], x[0] + 0.05) and torch.equal(start[1:], fallback[1:])


def test_free_at_steps_within_the_eps_of_the_call_that_took_the_step(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    # Under an eps warm-up a copy at a smaller eps takes the step; settling it later (the next call, or a
    # checkpoint's state_dict on the original objective) must use the copy's eps, not the full one.
    x, y = batch[0][:8], batch[1][:8]
    model = small_cnn().train()
    objective = FreeAT(threat=THREAT, replays=2)
    small = dataclasses.replace(objective, threat=THREAT.with_eps(0.02))
    object.__setattr__(small, "_carry", objective._carry)
    loss, _ = small.loss(model, x, y, generator=None)
    loss.backward()
    delta = objective.state_dict()["delta"]
    assert bool(delta.any()) and float(delta.abs().max()) <= 0.02 + 1e-7


def test_fast_at_prior_start_raises_robust_accuracy_through_the_trainer(
    at_data: ImageDataset, trained_with: Trained, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    _, base_robust = clean_and_robust(trained_with("standard")[0], batch)
    objective = FastAT(threat=THREAT, prior_start=True)
    model = small_cnn()
    config = TrainConfig(epochs=3, batch_size=32, lr=2e-3, seed=0, robust_val=0)
    result = train(model, at_data, objective=objective, config=config)
    clean, robust = clean_and_robust(model, batch)
    assert robust >= base_robust + 0.15, (clean, robust, base_robust)
    assert clean >= 0.8 and result.stopped is None
    seen = objective._prior.seen  # the trainer passed every training sample's position
    assert seen is not None and seen.shape[0] == len(at_data) and bool(seen.all())


def test_free_at_reuses_the_training_backward_and_carries_the_perturbation(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = batch[0][:20], batch[1][:20]
    model = small_cnn().train()
    objective = FreeAT(threat=THREAT, replays=2)
    loss, _ = objective.loss(model, x, y, generator=None)
    leaf = objective._carry.pending
    assert leaf is not None and not bool(leaf.detach().any())  # starts at zero
    loss.backward()  # the one backward gives the weight gradient and the input gradient
    assert leaf.grad is not None and all(p.grad is not None for p in model.parameters())
    expected = project_delta(leaf.detach() + THREAT.eps * leaf.grad.sign(), "linf", THREAT.eps)
    objective.loss(model, x, y, generator=None)  # the next replay starts from the moved perturbation
    moved = objective._carry.pending
    assert moved is not None and torch.equal(moved.detach(), expected)
    # It carries over to the next (smaller) batch, and survives a checkpoint round trip.
    state = objective.state_dict()
    other = FreeAT(threat=THREAT, replays=2)
    other.load_state_dict(state)
    other.loss(model, x[:5], y[:5], generator=None)
    assert other._carry.pending is not None and torch.equal(other._carry.pending.detach(), expected[:5])
    other.load_state_dict({})
    assert other._carry.delta is None


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("pgd-at", {"steps": 0}, "steps"),
        ("pgd-at", {"step_size": -0.1}, "step_size"),
        ("pgd-at", {"clean_weight": 1.5}, "clean_weight"),
        ("trades", {"beta": -1.0}, "beta"),
        ("mart", {"attack_mode": "test"}, "attack_mode"),
        ("free-at", {"replays": 0}, "replays"),
        ("fast-at", {"guard_drop": 0.0}, "guard_drop"),
        ("fast-at", {"threat": {"eps": 0.3}}, "ThreatModel"),
        ("trades", {"replays": 2}, "no option"),
    ],
)
def test_bad_hyperparameters_are_refused(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_objective(name, **options)


def test_params_are_json_with_the_threat_and_the_papers_defaults() -> None:
    assert create_objective("pgd-at").params() == {
        "threat": {"norm": "linf", "eps": 0.3, "bounds": [0.0, 1.0]},
        "steps": 7,
        "step_size": None,
        "random_start": True,
        "clean_weight": 0.0,
        "attack_mode": "eval",
    }
    trades = create_objective("trades", threat=THREAT)
    assert trades.params()["beta"] == 6.0 and trades.params()["steps"] == 10
    assert trades.alpha == pytest.approx(THREAT.eps / 4)  # type: ignore[attr-defined]
    assert create_objective("mart").params()["beta"] == 6.0
    assert create_objective("fast-at").alpha == pytest.approx(0.375)  # type: ignore[attr-defined]
    assert create_objective("pgd-at").alpha == pytest.approx(2.5 * 0.3 / 7)  # type: ignore[attr-defined]
    free = create_objective("free-at")
    assert free.params() == {
        "threat": {"norm": "linf", "eps": 0.3, "bounds": [0.0, 1.0]},
        "replays": 8,
        "step_size": None,
    }
