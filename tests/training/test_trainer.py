"""The training loop: it learns, checkpoints atomically (all state), resumes to identical weights, keeps an EMA,
validates robustness on held-out samples, replays batches and lets callbacks stop it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from advrobust.attacks import APGD, PGD
from advrobust.data import ImageDataset
from advrobust.errors import ConfigError, ModelFileError
from advrobust.fileio import atomic_writer
from advrobust.models import create_model
from advrobust.threat import ThreatModel
from advrobust.training import (
    CHECKPOINT_NAME,
    EMA,
    Callback,
    FreeAT,
    OverfitGuard,
    StepInfo,
    Stop,
    TrainConfig,
    TrainContext,
    accuracy,
    create_objective,
    load_checkpoint,
    train,
)
from advrobust.training.trainer import _cyclic, _optimizer, not_robust_warning
from advrobust.training.validation import holdout_split, robust_accuracy

from .conftest import THREAT, make_objective, small_cnn


def test_training_learns_mnist(trained_cnn: torch.nn.Module, mini_test: ImageDataset) -> None:
    assert accuracy(trained_cnn, mini_test) > 0.93


def _fresh(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=10, in_channels=1)


def test_resume_ends_with_identical_weights(tmp_path: Path, mini_train: ImageDataset) -> None:
    data = mini_train.take(600)
    config = TrainConfig(epochs=3, batch_size=50, seed=7, optimizer="sgd", lr=0.05, schedule="cosine")
    straight = _fresh()
    history = train(straight, data, config=config, out_dir=tmp_path / "a").history

    # Real interruption: run epochs 1-2 with a callback that raises during epoch 3.
    class StopError(Exception):
        pass

    def stop_in_epoch_3(step) -> None:  # type: ignore[no-untyped-def]
        if step.epoch == 3 and step.step > 1:
            raise StopError

    killed = _fresh()
    with pytest.raises(StopError):
        train(killed, data, config=config, out_dir=tmp_path / "e", progress=stop_in_epoch_3)
    assert int(load_checkpoint(tmp_path / "e" / CHECKPOINT_NAME)["epoch"]) == 2
    resumed = _fresh(seed=123)  # different init: everything must come from the checkpoint
    result = train(resumed, data, config=config, out_dir=tmp_path / "e", resume=True)
    assert result.resumed_from == 2
    assert [h["loss"] for h in result.history] == [h["loss"] for h in history]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_resume_refuses_other_settings(tmp_path: Path, mini_train: ImageDataset) -> None:
    data = mini_train.take(100)
    train(_fresh(), data, config=TrainConfig(epochs=1, batch_size=50), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="other settings"):
        train(_fresh(), data, config=TrainConfig(epochs=2, batch_size=25), out_dir=tmp_path, resume=True)
    # More epochs with the same settings is fine.
    result = train(_fresh(), data, config=TrainConfig(epochs=2, batch_size=50), out_dir=tmp_path, resume=True)
    assert len(result.history) == 2


def test_resume_accepts_a_checkpoint_from_before_an_option_existed(
    tmp_path: Path, mini_train: ImageDataset
) -> None:
    from advrobust.training.checkpoint import save_checkpoint

    data = mini_train.take(100)
    train(_fresh(), data, config=TrainConfig(epochs=1, batch_size=50), out_dir=tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    del state["config"]["train"]["eps_warmup"]  # as written by a version without the option
    # ... and before robust validation used APGD-CE-20 (PGD-10 then): a clean run never validates, so
    # those options do not keep it from resuming.
    del state["config"]["train"]["robust_val_attack"]
    state["config"]["train"]["robust_val_steps"] = 10
    save_checkpoint(tmp_path / CHECKPOINT_NAME, state)
    result = train(_fresh(), data, config=TrainConfig(epochs=2, batch_size=50), out_dir=tmp_path, resume=True)
    assert result.resumed_from == 1
    with pytest.raises(ConfigError, match="other settings") as refused:
        train(
            _fresh(),
            data,
            config=TrainConfig(epochs=3, batch_size=50, lr=2e-3),
            out_dir=tmp_path,
            resume=True,
        )
    assert "train: lr 0.001 -> 0.002" in str(refused.value)


def test_a_checkpoint_from_before_apgd_validation_resumes_only_with_pgd_validation(
    tmp_path: Path, mini_train: ImageDataset
) -> None:
    # Runs checkpointed before robust_val_attack existed validated with PGD-10: resuming one with the new
    # defaults (APGD-CE-20) would change how its epochs are chosen, so it takes the old options, and the
    # refusal says which.
    from advrobust.training.checkpoint import save_checkpoint

    data = mini_train.take(200)
    old = TrainConfig(epochs=1, batch_size=50, robust_val=20, robust_val_attack="pgd", robust_val_steps=10)
    objective = make_objective("fast-at", guard=False)
    train(_fresh(), data, objective=objective, config=old, out_dir=tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    del state["config"]["train"]["robust_val_attack"]  # as written by a version without the option
    save_checkpoint(tmp_path / CHECKPOINT_NAME, state)
    new = TrainConfig(epochs=2, batch_size=50, robust_val=20)
    with pytest.raises(ConfigError, match="other settings") as refused:
        train(_fresh(), data, objective=objective, config=new, out_dir=tmp_path, resume=True)
    assert "robust_val_attack 'pgd' -> 'apgd'" in str(refused.value)
    assert "--robust-val-attack pgd --robust-val-steps 10" in str(refused.value)
    again = dataclasses.replace(old, epochs=2)
    result = train(_fresh(), data, objective=objective, config=again, out_dir=tmp_path, resume=True)
    assert result.resumed_from == 1 and len(result.history) == 2


def test_corrupt_and_missing_checkpoints_are_refused(tmp_path: Path, mini_train: ImageDataset) -> None:
    with pytest.raises(ModelFileError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing.pt")
    train(_fresh(), mini_train.take(100), config=TrainConfig(epochs=1, batch_size=50), out_dir=tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_checkpoint(path)


def test_pickled_objects_in_checkpoints_are_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "advrobust.checkpoint/1", "x": Evil()}, path)
    with pytest.raises(ModelFileError, match="weights-only"):
        load_checkpoint(path)


def test_atomic_writer_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write(b"half-written")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# --- adversarial training: resume, checkpoint contents, EMA, robust validation, replays, callbacks ---


class StopError(Exception):
    pass


def _kill_in_epoch(epoch: int) -> Callable[[StepInfo], None]:
    def stop(step: StepInfo) -> None:
        if step.epoch == epoch and step.step > 1:
            raise StopError

    return stop


RESUMABLE: dict[str, tuple[str, dict[str, object]]] = {
    # Free-AT carries its perturbation (objective state) and replays; Fast-AT's guard keeps its own state;
    # with prior_start Fast-AT keeps one perturbation per training sample (objective state).
    "free-at": ("free-at", {"replays": 2}),
    "fast-at": ("fast-at", {"guard_samples": 64, "guard_steps": 3}),
    "fast-at-prior": ("fast-at", {"guard_samples": 64, "guard_steps": 3, "prior_start": True}),
}


@pytest.mark.parametrize("case", list(RESUMABLE))
def test_resume_after_a_kill_reproduces_adversarial_training(
    case: str, tmp_path: Path, mini_train: ImageDataset
) -> None:
    data = mini_train.take(360)
    config = TrainConfig(
        epochs=3, batch_size=50, seed=3, lr=2e-3, ema_decay=0.9, robust_val=60, robust_val_steps=3
    )
    name, options = RESUMABLE[case]
    objective = make_objective(name, **options)
    straight = small_cnn()
    expected = train(straight, data, objective=objective, config=config, out_dir=tmp_path / "a")

    killed = small_cnn()
    with pytest.raises(StopError):
        train(
            killed,
            data,
            objective=objective,
            config=config,
            out_dir=tmp_path / "k",
            progress=_kill_in_epoch(3),
        )
    assert int(load_checkpoint(tmp_path / "k" / CHECKPOINT_NAME)["epoch"]) == 2
    resumed = small_cnn(seed=123)  # different init: everything must come from the checkpoint
    result = train(resumed, data, objective=objective, config=config, out_dir=tmp_path / "k", resume=True)

    assert result.resumed_from == 2
    assert (result.weights, result.best_epoch) == (expected.weights, expected.best_epoch)
    for key in ("loss", "train_accuracy", "holdout_robust_accuracy", "holdout_accuracy"):
        assert [h[key] for h in result.history] == [h[key] for h in expected.history], key
    for (key, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    raw_a = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME)
    raw_k = load_checkpoint(tmp_path / "k" / CHECKPOINT_NAME)
    for key, value in raw_a["model"].items():
        assert torch.equal(value, raw_k["model"][key]), key
    for key, value in raw_a["ema"]["module"].items():
        assert torch.equal(value, raw_k["ema"]["module"][key]), key


def test_checkpoint_holds_all_the_state(tmp_path: Path, mini_train: ImageDataset) -> None:
    data = mini_train.take(200)
    config = TrainConfig(epochs=2, batch_size=50, ema_decay=0.9, robust_val=40, robust_val_steps=2)
    objective = FreeAT(threat=THREAT, replays=3)
    model = small_cnn()
    result = train(
        model,
        data,
        objective=objective,
        config=config,
        out_dir=tmp_path,
        callbacks=[OverfitGuard(threat=THREAT, samples=32, steps=2)],
    )
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    keys = set(model.state_dict())
    assert state["epoch"] == 2
    assert set(state["model"]) == keys and set(state["ema"]["module"]) == keys
    assert state["ema"]["updates"] == 2 * 4 * 3  # epochs * batches * replays
    assert state["scheduler"]["last_epoch"] == 2 * 4 * 3
    assert state["optimizer"]["state"]  # Adam moments
    assert set(state["rng"]) >= {"attack", "torch"}  # the data order depends on seed and epoch only
    assert len(state["rng"]["attack"]) == 1  # one generator per process
    assert state["objective_state"]["delta"].shape == (50, 1, 28, 28)
    [guard] = state["callbacks"]
    assert guard["best"] is not None and set(guard["good"]["model"]) == keys
    assert state["best"]["epoch"] == result.best_epoch and set(state["best"]["model"]) == keys
    assert state["config"]["objective"]["threat"] == {"norm": "linf", "eps": 0.1, "bounds": [0.0, 1.0]}
    assert state["stopped"] is None
    assert len(state["history"]) == 2 and "guard_robust_accuracy" in state["history"][-1]


def test_ema_weights_differ_from_the_raw_ones_and_are_delivered(
    tmp_path: Path, mini_train: ImageDataset
) -> None:
    model = small_cnn()
    result = train(
        model,
        mini_train.take(300),
        config=TrainConfig(epochs=2, batch_size=50, ema_decay=0.9),
        out_dir=tmp_path,
    )
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    raw, ema = state["model"], state["ema"]["module"]
    assert result.weights == "ema"
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema[key]), key


def test_ema_follows_the_warmed_up_average() -> None:
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, 0.99)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for t in range(1, 4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update(net)
        decay = min(0.99, (1 + t) / (10 + t))
        expected = {k: decay * expected[k] + (1 - decay) * v for k, v in net.state_dict().items()}
    for key, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[key])


def test_robust_validation_holds_out_samples_and_delivers_the_most_robust_epoch(
    mini_train: ImageDataset,
) -> None:
    data = mini_train.take(400)
    seen: list[int] = []

    class Sizes(Callback):
        def on_train_start(self, ctx: TrainContext) -> None:
            seen.append(len(ctx.data))

    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Weights(Callback):
        def on_epoch_end(self, ctx: TrainContext, *, epoch: int) -> None:
            snapshots[epoch] = ctx.snapshot()["model"]

    model = small_cnn()
    config = TrainConfig(epochs=3, batch_size=50, lr=2e-3, robust_val=80, robust_val_steps=3)
    result = train(
        model,
        data,
        objective=make_objective("fast-at", guard=False),
        config=config,
        callbacks=[Sizes(), Weights()],
    )
    assert seen == [320] and result.holdout_samples == 80
    scores = [(h["holdout_robust_accuracy"], h["holdout_accuracy"]) for h in result.history]
    assert result.weights == "best" and result.best_epoch == 1 + scores.index(max(scores))
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[result.best_epoch][key]), key
    # select="last" keeps the last weights instead.
    last = small_cnn()
    again = train(
        last,
        data,
        objective=make_objective("fast-at", guard=False),
        config=dataclasses.replace(config, select="last"),
    )
    assert again.weights == "last" and again.best_epoch is None
    assert [h["loss"] for h in again.history] == [h["loss"] for h in result.history]
    for key, value in last.state_dict().items():
        assert torch.equal(value, snapshots[3][key]), key


@pytest.mark.parametrize("attack", ["apgd", "pgd"])
def test_robust_validation_scores_each_epoch_with_the_chosen_attack(
    attack: str, mini_train: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    import advrobust.training.validation as validation

    built: list[tuple[str, int]] = []
    real = validation.validation_attack

    def recording(name: str, threat: ThreatModel, steps: int) -> object:
        built.append((name, steps))
        return real(name, threat, steps)

    monkeypatch.setattr(validation, "validation_attack", recording)
    data = mini_train.take(400)
    config = TrainConfig(
        epochs=2, batch_size=50, lr=2e-3, robust_val=80, robust_val_attack=attack, robust_val_steps=5
    )
    model = small_cnn()
    objective = make_objective("fast-at", guard=False)
    result = train(model, data, objective=objective, config=dataclasses.replace(config, select="last"))
    assert built == [(attack, 5), (attack, 5)]  # once per epoch
    _, held = holdout_split(data, 80, THREAT, seed=config.seed)
    assert held is not None
    clean, robust = robust_accuracy(model, held, THREAT, attack=attack, steps=5, seed=config.seed + 2)
    assert (robust, clean) == (
        result.history[-1]["holdout_robust_accuracy"],
        result.history[-1]["holdout_accuracy"],
    )
    assert isinstance(real(attack, THREAT, 5), APGD if attack == "apgd" else PGD)


def test_unknown_robust_validation_attacks_are_refused() -> None:
    import advrobust.training.validation as validation

    with pytest.raises(ConfigError, match="robust_val_attack"):
        TrainConfig(robust_val_attack="fgsm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="choose one of apgd, pgd"):
        validation.validation_attack("fgsm", THREAT, 5)
    with pytest.raises(ConfigError, match="choose one of apgd, pgd"):
        validation.validation_label("fgsm", 5)


def test_a_run_that_never_becomes_robust_says_so(mini_train: ImageDataset) -> None:
    # At linf eps 0.5 every image can be moved to the same grey image: no model can be robust, and the
    # run must not end as if it were. The same run at eps 0.1 becomes robust and says nothing.
    data = mini_train.take(1000)
    config = TrainConfig(epochs=2, batch_size=50, lr=2e-3, robust_val=200, robust_val_steps=10)
    hopeless = create_objective("fast-at", threat=ThreatModel(norm="linf", eps=0.5), guard=False)
    failed = train(small_cnn(), data, objective=hopeless, config=config)
    assert max(h["holdout_robust_accuracy"] for h in failed.history) < 0.1
    assert len(failed.warnings) == 1 and "is not robust" in failed.warnings[0]
    assert "eps 0.5" in failed.warnings[0] and failed.to_dict()["warnings"] == failed.warnings
    assert "under APGD-CE-10 at linf" in failed.warnings[0]  # the validation attack the run used
    fine = train(small_cnn(), data, objective=make_objective("fast-at", guard=False), config=config)
    assert max(h["holdout_robust_accuracy"] for h in fine.history) > 0.3
    assert fine.warnings == []


def test_the_not_robust_warning_compares_with_guessing_the_most_common_class() -> None:
    labels = torch.tensor([0, 0, 0, 1, 2, 3, 4, 5, 6, 7])  # always answering 0 scores 30%
    history = [{"epoch": 1.0, "holdout_robust_accuracy": 0.1}, {"epoch": 2.0, "holdout_robust_accuracy": 0.3}]
    warning = not_robust_warning(history, labels, THREAT, "PGD-10")
    assert warning is not None and "30.0%" in warning and "PGD-10" in warning
    better = [*history, {"epoch": 3.0, "holdout_robust_accuracy": 0.31}]
    assert not_robust_warning(better, labels, THREAT, "PGD-10") is None
    assert not_robust_warning(history, labels, None, "PGD-10") is None  # clean training: nothing to say
    assert not_robust_warning([{"loss": 1.0}], labels, THREAT, "PGD-10") is None  # no robust validation


def test_the_not_robust_warning_judges_the_weights_delivered() -> None:
    labels = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])  # guessing scores 20%
    history = [
        {"epoch": 1.0, "holdout_robust_accuracy": 0.6},
        {"epoch": 2.0, "holdout_robust_accuracy": 0.1},  # catastrophic overfitting in the last epoch
    ]
    assert (
        not_robust_warning(history, labels, THREAT, "APGD-CE-20", delivered=1) is None
    )  # the best epoch's weights
    last = not_robust_warning(history, labels, THREAT, "PGD-10")  # the last weights (select="last")
    assert last is not None and "10.0%" in last and "epoch 2" in last and "epoch 1 scored 60.0%" in last


def test_robust_validation_needs_an_adversarial_objective(mini_train: ImageDataset) -> None:
    with pytest.raises(ConfigError, match="adversarial objective"):
        train(small_cnn(), mini_train.take(100), config=TrainConfig(epochs=1, robust_val=10))
    with pytest.raises(ConfigError, match="more than half"):
        train(
            small_cnn(),
            mini_train.take(100),
            objective=make_objective("fast-at"),
            config=TrainConfig(epochs=1, robust_val=60),
        )


def test_callbacks_can_stop_a_run_which_then_stays_stopped(tmp_path: Path, mini_train: ImageDataset) -> None:
    class StopAtStep(Callback):
        def on_step_end(self, ctx: TrainContext, *, epoch: int, step: int) -> Stop | None:
            return Stop("enough") if (epoch, step) == (2, 3) else None

    data = mini_train.take(250)
    config = TrainConfig(epochs=4, batch_size=50)
    model = small_cnn()
    result = train(model, data, config=config, out_dir=tmp_path, callbacks=[StopAtStep()])
    assert result.stopped == {
        "epoch": 2,
        "step": 3,
        "reason": "enough",
        "restored_epoch": None,
        "restored_step": None,
    }
    assert len(result.history) == 2 and result.history[-1]["stopped"] == 1.0
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    again_model = small_cnn(seed=5)
    again = train(again_model, data, config=config, out_dir=tmp_path, resume=True, callbacks=[StopAtStep()])
    assert again.stopped == result.stopped and len(again.history) == 2
    for key, value in again_model.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_progress_reports_clean_and_robust_accuracy_and_throughput(mini_train: ImageDataset) -> None:
    infos: list[StepInfo] = []
    train(
        small_cnn(),
        mini_train.take(200),
        objective=make_objective("fast-at", guard=False),
        config=TrainConfig(epochs=1, batch_size=50, robust_val=0),
        progress=infos.append,
    )
    assert [i.step for i in infos] == [1, 4]
    last = infos[-1]
    assert last.robust_accuracy == last.accuracy and last.clean_accuracy is not None
    assert 0 <= last.clean_accuracy <= 1 and last.samples_per_second > 0
    plain: list[StepInfo] = []
    train(
        small_cnn(), mini_train.take(100), config=TrainConfig(epochs=1, batch_size=50), progress=plain.append
    )
    assert plain[-1].robust_accuracy is None and plain[-1].clean_accuracy is None


def test_cyclic_schedule_is_the_fast_at_triangle() -> None:
    factor = _cyclic(100)
    values = [factor(t) for t in range(100)]
    assert values.index(max(values)) == 39 and max(values) == pytest.approx(1.0)
    assert values[-1] == 0.0 and values[0] == pytest.approx(0.01 / 0.4)


def test_eps_warmup_ramps_the_training_eps_step_by_step(mini_train: ImageDataset) -> None:
    from advrobust.training.pgd_at import PGDAT

    seen: list[float] = []

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Recording(PGDAT):
        def loss(
            self,
            model: torch.nn.Module,
            x: torch.Tensor,
            y: torch.Tensor,
            *,
            generator: torch.Generator | None,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            seen.append(self.threat.eps)
            return super().loss(model, x, y, generator=generator)

    data = mini_train.take(200)
    objective = Recording(threat=THREAT, steps=2)
    train(small_cnn(), data, objective=objective, config=TrainConfig(epochs=3, batch_size=50, eps_warmup=1.5))
    steps = 4  # per epoch; the ramp spans 6 steps, then the full eps
    expected = [THREAT.eps * min(1.0, s / (1.5 * steps)) for s in range(1, 3 * steps + 1)]
    assert seen == pytest.approx(expected)
    assert objective.threat.eps == THREAT.eps  # the objective itself is untouched


@pytest.mark.parametrize("name", ["free-at", "fast-at"])
def test_eps_warmup_keeps_the_state_an_objective_carries_between_batches(
    name: str, tmp_path: Path, mini_train: ImageDataset
) -> None:
    # The ramp trains on copies of the objective at smaller eps; they share its state (Free-AT's carried
    # perturbation, Fast-AT's kept ones). The run ends inside the ramp, so every step ran on a copy: the
    # objective's own state is what the copies left, and the checkpoint holds it, within the ramped eps.
    data = mini_train.take(200)
    options: dict[str, object] = (
        {"replays": 2} if name == "free-at" else {"prior_start": True, "guard": False}
    )
    objective = make_objective(name, **options)
    config = TrainConfig(epochs=1, batch_size=50, eps_warmup=2, robust_val=0)
    train(small_cnn(), data, objective=objective, config=config, out_dir=tmp_path)
    state = objective.state_dict()  # type: ignore[attr-defined]
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)["objective_state"]
    if name == "free-at":
        assert state["delta"].shape[0] == 50 and bool(state["delta"].any())
        # The last step ran at eps * 4/8 (step 4 of a ramp over 8): its own eps bounds it, not the full one.
        assert float(saved["delta"].abs().max()) <= THREAT.eps * 4 / 8 + 1e-6
    else:
        assert bool(state["seen"].all()) and torch.equal(saved["codes"], state["codes"])


class _Positions:
    """A clean objective that records each batch with the positions the trainer passed (sample_index)."""

    name = "positions"
    sample_index = True

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.reserved: int | None = None

    def reserve_samples(self, num_samples: int) -> None:
        self.reserved = num_samples

    def loss(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None,
        index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append((x.detach().clone(), index.clone()))
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y), logits

    def params(self) -> dict[str, object]:
        return {}


def test_the_trainer_passes_each_batch_its_samples_positions(mini_train: ImageDataset) -> None:
    data = mini_train.take(110)  # batches of 50, 50 and 10
    objective = _Positions()
    train(small_cnn(), data, objective=objective, config=TrainConfig(epochs=2, batch_size=50))
    assert objective.reserved == 110
    assert [x.shape[0] for x, _ in objective.seen] == [50, 50, 10, 50, 50, 10]
    for x, index in objective.seen:
        assert torch.equal(x, data.images[index].float() / 255)
    epochs = [torch.cat([i for _, i in objective.seen[:3]]), torch.cat([i for _, i in objective.seen[3:]])]
    assert all(sorted(e.tolist()) == list(range(110)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])  # a new order each epoch


def test_a_fast_at_checkpoint_from_before_prior_start_resumes(
    tmp_path: Path, mini_train: ImageDataset
) -> None:
    from advrobust.training.checkpoint import save_checkpoint

    data = mini_train.take(100)
    objective = make_objective("fast-at", guard=False)
    config = TrainConfig(epochs=1, batch_size=50, robust_val=0)
    train(small_cnn(), data, objective=objective, config=config, out_dir=tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    del state["config"]["objective"]["prior_start"]  # as written by a version without the option
    save_checkpoint(tmp_path / CHECKPOINT_NAME, state)
    again = TrainConfig(epochs=2, batch_size=50, robust_val=0)
    result = train(small_cnn(), data, objective=objective, config=again, out_dir=tmp_path, resume=True)
    assert result.resumed_from == 1
    prior = make_objective("fast-at", guard=False, prior_start=True)
    with pytest.raises(ConfigError, match="prior_start"):
        train(small_cnn(), data, objective=prior, config=again, out_dir=tmp_path, resume=True)


def test_eps_warmup_is_refused_where_it_cannot_apply(mini_train: ImageDataset) -> None:
    data = mini_train.take(100)
    with pytest.raises(ConfigError, match="clean inputs"):
        train(small_cnn(), data, config=TrainConfig(epochs=1, eps_warmup=1))
    with pytest.raises(ConfigError, match="eps_warmup"):
        TrainConfig(eps_warmup=-1)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimizer_takes_the_fused_step_and_matches_the_per_tensor_one(optimizer: str) -> None:
    # The fused step is one kernel over all parameters; it must update them as the per-tensor loop does.
    config = TrainConfig(optimizer=optimizer, lr=0.01, weight_decay=1e-4)  # type: ignore[arg-type]
    fused_model, plain_model = small_cnn(), small_cnn()
    fused = _optimizer(fused_model, config)
    assert all(group["fused"] for group in fused.param_groups)
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    extra = {"momentum": config.momentum} if optimizer == "sgd" else {}
    plain = cls(plain_model.parameters(), lr=0.01, weight_decay=1e-4, **extra)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
