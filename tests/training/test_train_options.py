"""Wiring of the adversarial options: `advrobust train` flags and YAML build the objective and trainer, and the
saved model and card are the ones chosen (best held-out robust epoch, or the EMA)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from advrobust import runs
from advrobust.cli import main
from advrobust.config import TrainSettings
from advrobust.data import ImageDataset
from advrobust.errors import ConfigError
from advrobust.models import load_model, read_card
from advrobust.runs import build_objective, train_run
from advrobust.training import CHECKPOINT_NAME, Callback, Stop, TrainContext, load_checkpoint


@pytest.fixture(scope="module")
def small_npz(
    tmp_path_factory: pytest.TempPathFactory, mini_train: ImageDataset, mini_test: ImageDataset
) -> Path:
    """600 training and 100 test images of mnist-mini as a .npz data set."""
    path = tmp_path_factory.mktemp("data") / "mnist-600.npz"
    train, test = mini_train.take(600), mini_test.take(100)
    np.savez(
        path,
        x_train=train.images.numpy(),
        y_train=train.labels.numpy(),
        x_test=test.images.numpy(),
        y_test=test.labels.numpy(),
    )
    return path


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_the_most_robust_epoch_is_saved_and_the_card_says_which(small_npz: Path, tmp_path: Path) -> None:
    settings = TrainSettings(
        data=str(small_npz),
        defense="fast-at",
        eps=0.1,
        step_size=0.1,
        epochs=3,
        batch_size=50,
        robust_val=100,
        out=str(tmp_path / "run"),
    )
    outcome = train_run(settings)
    card = read_card(outcome.path)
    objective = card.training["objective"]
    assert objective["name"] == "fast-at" and objective["step_size"] == 0.1 and objective["guard"] is True
    assert objective["threat"] == {"norm": "linf", "eps": 0.1, "bounds": [0.0, 1.0]}
    best = outcome.result.best_epoch
    assert card.training["weights"] == "best" and card.training["best_epoch"] == best
    assert card.training["holdout_samples"] == 100 and card.training["stopped"] is None
    assert (
        card.metrics["holdout_robust_accuracy"] == outcome.result.history[best - 1]["holdout_robust_accuracy"]
    )
    state = load_checkpoint(outcome.path / CHECKPOINT_NAME)
    _same_weights(load_model(outcome.path), state["best"]["model"])


def test_with_ema_the_ema_weights_are_saved(small_npz: Path, tmp_path: Path) -> None:
    settings = TrainSettings(
        data=str(small_npz), epochs=1, batch_size=50, ema_decay=0.9, out=str(tmp_path / "run")
    )
    outcome = train_run(settings)
    assert read_card(outcome.path).training["weights"] == "ema"
    state = load_checkpoint(outcome.path / CHECKPOINT_NAME)
    saved = load_model(outcome.path)
    _same_weights(saved, state["ema"]["module"])
    assert any(not torch.equal(v, state["model"][k]) for k, v in saved.state_dict().items())


def test_cli_flags_and_yaml_set_each_objectives_options(small_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "trades"
    args = ["train", "--data", str(small_npz), "--defense", "trades", "--norm", "l2", "--eps", "1.5"]
    args += ["--beta", "3", "--steps", "2", "--step-size", "0.5", "--attack-mode", "train", "--epochs", "1"]
    args += ["--robust-val", "0", "--eps-warmup", "0.5", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert read_card(out).training["config"]["eps_warmup"] == 0.5
    trades = read_card(out).training["objective"]
    assert trades == {
        "name": "trades",
        "threat": {"norm": "l2", "eps": 1.5, "bounds": [0.0, 1.0]},
        "beta": 3.0,
        "steps": 2,
        "step_size": 0.5,
        "attack_mode": "train",
    }
    config = tmp_path / "free.yaml"
    config.write_text(
        f"data: {small_npz}\ndefense: free-at\neps: 0.1\nreplays: 2\nepochs: 1\nrobust-val: 0\nschedule: cyclic\n"
    )
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "free"), "--quiet"]) == 0
    card = read_card(tmp_path / "free")
    assert card.training["objective"]["replays"] == 2 and card.training["objective"]["threat"]["eps"] == 0.1
    assert card.training["config"]["schedule"] == "cyclic"


def test_cli_passes_the_guard_and_prior_options_to_fast_at(small_npz: Path, tmp_path: Path) -> None:
    args = ["train", "--data", str(small_npz), "--defense", "fast-at", "--eps", "0.1", "--epochs", "1"]
    options = ["--guard-patience", "0", "--prior-start", "--prior-reg", "2.5", "--robust-val", "0", "--quiet"]
    assert main([*args, *options, "--out", str(tmp_path / "run")]) == 0
    objective = read_card(tmp_path / "run").training["objective"]
    assert objective["guard"] is True and objective["guard_patience"] == 0
    assert objective["prior_start"] is True and objective["prior_reg"] == 2.5
    with pytest.raises(ConfigError, match="--guard-patience does not apply to --defense pgd-at"):
        build_objective(TrainSettings.model_validate({"defense": "pgd-at", "guard_patience": 2}))


def test_cli_sets_the_robust_validation_attack_and_says_it(
    small_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(small_npz), "--defense", "fast-at", "--eps", "0.1", "--epochs", "1"]
    options = ["--robust-val", "50", "--robust-val-attack", "pgd", "--robust-val-steps", "3"]
    assert main([*args, *options, "--out", str(tmp_path / "pgd")]) == 0
    assert "the most robust on the held-out images under PGD-3" in capsys.readouterr().out
    config = read_card(tmp_path / "pgd").training["config"]
    assert (config["robust_val_attack"], config["robust_val_steps"]) == ("pgd", 3)
    assert main([*args, "--robust-val", "50", "--out", str(tmp_path / "default")]) == 0
    assert "under APGD-CE-20" in capsys.readouterr().out
    config = read_card(tmp_path / "default").training["config"]
    assert (config["robust_val_attack"], config["robust_val_steps"]) == ("apgd", 20)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"defense": "pgd-at", "beta": 3.0}, "--beta does not apply to --defense pgd-at"),
        ({"defense": "standard", "eps": 0.1}, "--norm/--eps apply to adversarial defenses"),
        ({"defense": "fast-at", "replays": 2, "steps": 3}, "--replays, --steps does not apply"),
    ],
)
def test_options_a_defense_does_not_have_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_objective(TrainSettings.model_validate(options))


def test_cli_prints_why_training_stopped(
    small_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Halt(Callback):  # stands in for the guard, which test_guard.py drives to a real collapse
        def on_epoch_end(self, ctx: TrainContext, *, epoch: int) -> Stop | None:
            return Stop("catastrophic overfitting: test stop", restored_epoch=1) if epoch == 2 else None

    monkeypatch.setattr(runs, "train_run", functools.partial(train_run, callbacks=[Halt()]))
    args = ["train", "--data", str(small_npz), "--defense", "fast-at", "--eps", "0.1", "--epochs", "4"]
    assert main([*args, "--robust-val", "0", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "warning: catastrophic overfitting: test stop" in printed
    card = read_card(tmp_path / "run")
    assert card.training["stopped"]["epoch"] == 2 and card.training["stopped"]["restored_epoch"] == 1
