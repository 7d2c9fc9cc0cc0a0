"""Fast-AT's catastrophic-overfitting guard: it fires when PGD accuracy collapses, restores the last good
weights, says so, and leaves a healthy run alone."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch

from advrobust.data import ImageDataset
from advrobust.errors import ConfigError
from advrobust.training import (
    CHECKPOINT_NAME,
    Callback,
    FastAT,
    TrainConfig,
    TrainContext,
    load_checkpoint,
    train,
)
from advrobust.training import guard as guard_module
from advrobust.training.callbacks import Stop
from advrobust.training.guard import OverfitGuard

from .conftest import THREAT, Trained


class StepWeights(Callback):
    """Keeps a copy of the weights (raw and EMA) after every step, keyed by (epoch, step)."""

    def __init__(self) -> None:
        self.weights: dict[tuple[int, int], dict[str, dict[str, torch.Tensor]]] = {}

    def on_step_end(self, ctx: TrainContext, *, epoch: int, step: int) -> None:
        self.weights[(epoch, step)] = ctx.snapshot()


def test_guard_restores_the_last_good_weights_when_robustness_collapses(
    trained_with: Trained, at_data: ImageDataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Deliberately broken: FGSM without a random start and a step twice eps (so every point sits on a corner of
    # the box) plus an SGD learning rate far too high, continuing from a model that PGD-AT made robust.
    model = copy.deepcopy(trained_with("pgd-at")[0])
    objective = FastAT(
        threat=THREAT, random_start=False, step_size=2 * THREAT.eps, guard_every=2, guard_samples=256
    )
    config = TrainConfig(
        epochs=3, batch_size=32, optimizer="sgd", lr=0.5, schedule="cyclic", robust_val=0, ema_decay=0.9
    )
    recorder = StepWeights()
    with caplog.at_level(logging.WARNING, logger="advrobust.training"):
        result = train(
            model,
            at_data.take(1000),
            objective=objective,
            config=config,
            out_dir=tmp_path,
            callbacks=[recorder],
        )

    stopped = result.stopped
    assert stopped is not None and "catastrophic overfitting" in stopped["reason"]
    good = (stopped["restored_epoch"], stopped["restored_step"])
    failed_at = (stopped["epoch"], stopped["step"] or 32)  # step 0: the epoch-end check, after step 32
    assert good < failed_at and ((good[0] - 1) * 32 + good[1]) % 2 == 0
    assert (stopped["epoch"], stopped["step"]) not in recorder.weights  # the run ended at the failed check
    # Both the raw weights and their EMA went back to the last good check; the EMA is delivered.
    assert result.weights == "ema"
    for key, value in model.state_dict().items():
        assert torch.equal(value, recorder.weights[good]["ema"][key]), key
    assert result.history[-1]["stopped"] == 1.0 and len(result.history) == stopped["epoch"] < 3
    assert any("catastrophic overfitting" in r.getMessage() for r in caplog.records)
    # The checkpoint holds the restored weights and the verdict, so resuming does not train on.
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["stopped"] == stopped
    for key, value in state["model"].items():
        assert torch.equal(value, recorder.weights[good]["model"][key]), key
        assert torch.equal(state["ema"]["module"][key], recorder.weights[good]["ema"][key]), key
    again = train(
        copy.deepcopy(model),
        at_data.take(1000),
        objective=objective,
        config=config,
        out_dir=tmp_path,
        resume=True,
        callbacks=[StepWeights()],
    )
    assert again.stopped == stopped and len(again.history) == len(result.history)


def test_guard_measures_pgd_accuracy_on_a_fixed_training_batch(trained_with: Trained) -> None:
    _, result = trained_with("fast-at")  # healthy Fast-AT: the guard ran every epoch and never fired
    assert result.stopped is None
    accuracies = [h["guard_robust_accuracy"] for h in result.history]
    assert len(accuracies) == 3 and max(accuracies) - accuracies[-1] <= 0.2 and accuracies[-1] > 0.5


def test_guard_can_be_turned_off() -> None:
    assert FastAT(threat=THREAT, guard=False).callbacks() == []
    [guard] = FastAT(threat=THREAT, guard_every=50, guard_drop=0.3, guard_patience=0).callbacks()
    assert (guard.every, guard.drop, guard.threat, guard.patience) == (50, 0.3, THREAT, 0)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="guard_patience"):
        FastAT(threat=THREAT, guard_patience=-1)


class Scripted:
    """Stands in for the guard's PGD measurement only: returns the next scripted accuracy."""

    def __init__(self, accuracies: list[float], n: int) -> None:
        self.accuracies, self.n = list(accuracies), n

    def __call__(self, *args: object, **kwargs: object) -> tuple[None, torch.Tensor]:
        correct = round(self.accuracies.pop(0) * self.n)
        return None, torch.arange(self.n) < correct


def run_guard(
    monkeypatch: pytest.MonkeyPatch,
    data: ImageDataset,
    accuracies: list[float],
    epochs: int | None = None,
    **options: object,
) -> tuple[list[object], list[float], OverfitGuard, torch.nn.Module]:
    """Epoch-end checks with the scripted accuracies in a run of ``epochs`` (default: one per accuracy);
    the weights are set to the epoch's number before its check."""
    monkeypatch.setattr(guard_module, "correct_under", Scripted(accuracies, 100))
    model = torch.nn.Linear(2, 1)
    ctx = TrainContext(
        model=model,
        data=data,
        device=torch.device("cpu"),
        seed=0,
        steps=10,
        epochs=epochs or len(accuracies),
    )
    guard = OverfitGuard(threat=THREAT, samples=100, **options)  # type: ignore[arg-type]
    guard.on_train_start(ctx)
    stops: list[object] = []
    for epoch in range(1, len(accuracies) + 1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        stops.append(guard.on_epoch_end(ctx, epoch=epoch))
        if stops[-1] is not None:
            break
    return stops, [float(model.weight.detach()[0, 0])], guard, model


def test_guard_lets_one_dip_pass_when_the_next_check_recovers(
    monkeypatch: pytest.MonkeyPatch, at_data: ImageDataset, caplog: pytest.LogCaptureFixture
) -> None:
    # Fast-AT on MNIST at eps 0.3 can lose 20 points at one epoch end and get them back at the next.
    with caplog.at_level(logging.WARNING, logger="advrobust.training"):
        stops, weight, guard, _ = run_guard(monkeypatch, at_data, [0.5, 0.25, 0.8, 0.55, 0.78])
    assert stops == [None] * 5 and weight == [5.0] and guard.strikes == 0
    assert guard.best == pytest.approx(0.8) and guard.good_at == (5, 0)
    assert sum("checking again" in r.getMessage() for r in caplog.records) == 2  # 0.25 and 0.55


def test_guard_stops_when_the_drop_persists_and_restores_the_last_good_check(
    monkeypatch: pytest.MonkeyPatch, at_data: ImageDataset
) -> None:
    stops, weight, _, _ = run_guard(monkeypatch, at_data, [0.3, 0.6, 0.35, 0.1, 0.9])
    stop = stops[-1]
    assert len(stops) == 4 and isinstance(stop, Stop)
    assert (stop.restored_epoch, stop.restored_step) == (2, 0) and weight == [2.0]
    assert "60.0% to 10.0% at epoch 4 (2 checks in a row)" in stop.reason
    # patience=0 is the paper's rule: the first drop stops the run.
    stops, weight, _, _ = run_guard(monkeypatch, at_data, [0.3, 0.6, 0.35], patience=0)
    assert len(stops) == 3 and isinstance(stops[-1], Stop) and weight == [2.0]


def test_guard_does_not_wait_past_the_last_epoch(
    monkeypatch: pytest.MonkeyPatch, at_data: ImageDataset
) -> None:
    # A drop at the run's last check cannot be confirmed later, so it restores at once.
    stops, weight, _, _ = run_guard(monkeypatch, at_data, [0.6, 0.7, 0.3])
    assert isinstance(stops[-1], Stop) and stops[-1].restored_epoch == 2 and weight == [2.0]


def test_guard_state_keeps_a_pending_drop_across_a_resume(
    monkeypatch: pytest.MonkeyPatch, at_data: ImageDataset
) -> None:
    stops, _, guard, _ = run_guard(monkeypatch, at_data, [0.6, 0.3], epochs=10)
    assert stops == [None, None] and guard.strikes == 1
    state = guard.state_dict()
    fresh = OverfitGuard(threat=THREAT)
    fresh.load_state_dict(state)
    assert (fresh.best, fresh.strikes, fresh.good_at) == (guard.best, guard.strikes, guard.good_at)
    old = {k: v for k, v in state.items() if k != "strikes"}  # a checkpoint from before the patience existed
    fresh.load_state_dict(old)
    assert fresh.strikes == 0
