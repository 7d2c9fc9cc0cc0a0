"""Fast-AT's catastrophic-overfitting guard: it fires when PGD accuracy collapses, restores the last good
weights, says so, and leaves a healthy run alone."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch

from advrobust.data import ImageDataset
from advrobust.training import (
    CHECKPOINT_NAME,
    Callback,
    FastAT,
    TrainConfig,
    TrainContext,
    load_checkpoint,
    train,
)

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
    [guard] = FastAT(threat=THREAT, guard_every=50, guard_drop=0.3).callbacks()
    assert (guard.every, guard.drop, guard.threat) == (50, 0.3, THREAT)  # type: ignore[attr-defined]
