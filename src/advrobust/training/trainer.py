"""The training loop shared by every objective: seeded, checkpointed every epoch, resumable exactly.

Beyond the loop: replays (several optimizer steps per batch, for Free-AT), callbacks that may stop the run
(Fast-AT's overfitting guard), an optional EMA of the weights, bf16 autocast and channels_last on CUDA, and,
for adversarial objectives, robust validation on samples held out of the training data with selection of
the most robust epoch (robust overfitting, Rice, Wong & Kolter, 2020, arXiv:2002.11569).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from advrobust.contract import eval_mode
from advrobust.data import BatchLoader, ImageDataset
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel
from advrobust.training.callbacks import Callback, Stop, TrainContext
from advrobust.training.checkpoint import load_checkpoint, save_checkpoint
from advrobust.training.ema import EMA
from advrobust.training.objectives import (
    Objective,
    Standard,
    StatefulObjective,
    objective_callbacks,
    objective_replays,
    objective_threat,
)
from advrobust.training.validation import robust_accuracy

CHECKPOINT_NAME = "checkpoint.pt"
PROGRESS_EVERY = 10
#: Held-out samples for robust validation when ``robust_val`` is None (at most a tenth of the data).
DEFAULT_ROBUST_VAL = 500

logger = logging.getLogger("advrobust.training")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings. Defaults suit the small MNIST CNNs (Adam, lr 1e-3).

    ``schedule="cyclic"`` is the triangle of Wong et al. (0 -> lr at 40% of the steps -> 0).
    ``ema_decay`` keeps an EMA of the weights (evaluated and delivered instead of the raw weights).
    ``robust_val`` samples are held out of the training data and attacked with PGD-``robust_val_steps``
    after each epoch (None: 500, at most a tenth of the data, for adversarial objectives; 0 for clean ones);
    ``select="best"`` then delivers the epoch with the highest robust (then clean) held-out accuracy.
    ``amp`` (bf16 autocast) and ``channels_last`` apply on CUDA only.
    """

    epochs: int = 5
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "onecycle", "cyclic"] = "constant"
    seed: int = 0
    ema_decay: float | None = None
    robust_val: int | None = None
    robust_val_steps: int = 10
    select: Literal["best", "last"] = "best"
    amp: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: use sgd or adam")
        if self.schedule not in ("constant", "cosine", "onecycle", "cyclic"):
            raise ConfigError(f"unknown schedule {self.schedule!r}: use constant, cosine, onecycle or cyclic")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must lie in (0, 1), got {self.ema_decay}: try 0.999, or None")
        if self.robust_val is not None and self.robust_val < 0:
            raise ConfigError(f"robust_val must be >= 0 (0 turns it off), got {self.robust_val}")
        if self.robust_val_steps < 1:
            raise ConfigError(f"robust_val_steps must be >= 1, got {self.robust_val_steps}")
        if self.select not in ("best", "last"):
            raise ConfigError(f"select must be 'best' or 'last', got {self.select!r}")


@dataclass(frozen=True)
class StepInfo:
    """What a progress callback receives every few batches.

    ``accuracy`` is the running train accuracy on the points the objective trained on; for adversarial
    objectives that is ``robust_accuracy`` (under the training attack), and ``clean_accuracy`` is measured
    on the clean inputs of every tenth batch. ``samples_per_second`` counts training images (not replays).
    """

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    accuracy: float
    samples_per_second: float
    clean_accuracy: float | None = None
    robust_accuracy: float | None = None


@dataclass
class TrainResult:
    """Per-epoch history and totals, which weights the model holds, and why training stopped early, if it did.

    ``weights``: "last" (the raw weights after the last epoch), "ema", or "best" (those of ``best_epoch``,
    the epoch with the highest accuracy under PGD on ``holdout_samples`` held out of the training data). ``stopped``: None, or the epoch, step and reason
    a callback gave (e.g. the overfitting guard), with the epoch and step of the weights it restored.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None
    weights: Literal["last", "ema", "best"] = "last"
    best_epoch: int | None = None
    stopped: dict[str, Any] | None = None
    holdout_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "seconds": self.seconds,
            "resumed_from": self.resumed_from,
            "weights": self.weights,
            "best_epoch": self.best_epoch,
            "stopped": self.stopped,
            "holdout_samples": self.holdout_samples,
        }


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _cyclic(total: int) -> Callable[[int], float]:
    # Wong et al.'s schedule, evaluated at the end of each step as in their code: the last step has lr 0.
    def factor(step: int) -> float:
        t = min(1.0, (step + 1) / total)
        return t / 0.4 if t <= 0.4 else (1.0 - t) / 0.6

    return factor


def _scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    total = config.epochs * steps
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    if config.schedule == "cyclic":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _cyclic(total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


@torch.no_grad()
def accuracy(
    model: nn.Module, data: ImageDataset, *, batch_size: int = 512, device: torch.device | None = None
) -> float:
    """Clean accuracy of ``model`` on ``data`` (eval mode, restored afterwards)."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = torch.zeros((), dtype=torch.long, device=device)
    with eval_mode(model):
        for x, y in BatchLoader(data, batch_size=batch_size, device=device):
            correct += (model(x).argmax(dim=1) == y).sum()
    return int(correct) / max(1, len(data))


def _holdout(
    data: ImageDataset, config: TrainConfig, threat: ThreatModel | None
) -> tuple[ImageDataset, ImageDataset | None]:
    """(training data, held-out robust-validation data): a seeded random choice of samples."""
    if threat is None:
        if config.robust_val:
            raise ConfigError(
                "robust_val needs an adversarial objective (one with a threat model): "
                "drop robust_val or choose e.g. pgd-at"
            )
        return data, None
    n = min(DEFAULT_ROBUST_VAL, len(data) // 10) if config.robust_val is None else config.robust_val
    if n == 0:
        return data, None
    if n > len(data) // 2:
        raise ConfigError(
            f"robust_val={n} would hold out more than half of the {len(data)} training samples: "
            "pass a smaller robust_val, or 0 to turn robust validation off"
        )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed))
    keep, held = order[:-n].sort().values, order[-n:].sort().values
    return data.subset(keep), data.subset(held)


@contextlib.contextmanager
def _autocast(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yield


def train(
    model: nn.Module,
    data: ImageDataset,
    *,
    objective: Objective | None = None,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    val_data: ImageDataset | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[StepInfo], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``model`` in place on ``data`` with ``objective``; checkpoint to ``out_dir`` after every epoch.

    With ``resume`` the run continues from ``out_dir/checkpoint.pt`` (model, optimizer, schedule, RNG, EMA,
    objective and callback state, best weights, history), so an interrupted run ends with the same weights as
    an uninterrupted one. The model ends in eval mode holding the weights ``result.weights`` names.
    ``callbacks`` run after the objective's own (see ``Callback``). A run a callback stopped stays stopped.
    Shape: data images (N, C, H, W) uint8, converted to [0, 1] per batch.
    """
    objective = objective or Standard()
    config = config or TrainConfig()
    device = (
        torch.device(device)
        if device is not None
        else next((p.device for p in model.parameters()), torch.device("cpu"))
    )
    cuda = device.type == "cuda"
    channels_last = cuda and config.channels_last
    amp = cuda and config.amp and torch.cuda.is_bf16_supported()
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    threat = objective_threat(objective)
    train_data, holdout = _holdout(data, config, threat)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    attack_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    loader = BatchLoader(
        train_data,
        batch_size=config.batch_size,
        shuffle=True,
        generator=shuffle_gen,
        device=device,
        drop_last=False,
    )
    steps = len(loader)
    replays = objective_replays(objective)
    optimizer = _optimizer(model, config)
    scheduler = _scheduler(optimizer, config, steps * replays)
    ema = EMA(model, config.ema_decay) if config.ema_decay is not None else None
    hooks = [*objective_callbacks(objective), *callbacks]
    ctx = TrainContext(model=model, data=train_data, device=device, seed=config.seed, steps=steps, ema=ema)
    for hook in hooks:
        hook.on_train_start(ctx)
    stateful = objective if isinstance(objective, StatefulObjective) else None
    if stateful is not None:
        stateful.load_state_dict({})  # a fresh start, whatever an earlier run left in the objective
    result = TrainResult(holdout_samples=len(holdout) if holdout is not None else 0)
    best: dict[str, Any] | None = None
    start_epoch = 0
    record = {
        "train": dataclasses.asdict(config),
        "objective": {"name": objective.name, **objective.params()},
    }

    checkpoint_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if resume:
        if checkpoint_path is None:
            raise ConfigError("resume needs the run directory (out_dir) that holds checkpoint.pt")
        state = load_checkpoint(checkpoint_path)
        saved = dict(state["config"])
        mismatched = sorted(k for k in record if _without_epochs(saved.get(k)) != _without_epochs(record[k]))
        if mismatched:
            raise ConfigError(
                f"the checkpoint in {out_dir} was made with other settings ({', '.join(mismatched)}): "
                "resume with the same options, or start a new run in another directory"
            )
        if len(state["callbacks"]) != len(hooks):
            raise ConfigError(
                f"the checkpoint in {out_dir} holds the state of {len(state['callbacks'])} callback(s) but this "
                f"run has {len(hooks)}: resume with the same callbacks"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        shuffle_gen.set_state(state["rng"]["shuffle"])
        attack_gen.set_state(state["rng"]["attack"].to(attack_gen.get_state().device))
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if stateful is not None:
            stateful.load_state_dict(state["objective_state"])
        for hook, hook_state in zip(hooks, state["callbacks"], strict=True):
            hook.load_state_dict(hook_state)
        best = state["best"]
        result.stopped = state["stopped"]
        result.history = [dict(h) for h in state["history"]]
        start_epoch = int(state["epoch"])
        result.resumed_from = start_epoch
        result.seconds = float(state.get("seconds", 0.0))

    for epoch in range(start_epoch, config.epochs):
        if result.stopped is not None:
            break
        model.train()
        tick = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        clean_correct = torch.zeros((), dtype=torch.long, device=device)
        evaluated = images = clean_seen = 0
        stop: Stop | None = None
        for step, (x_batch, y) in enumerate(loader):
            x = x_batch.contiguous(memory_format=torch.channels_last) if channels_last else x_batch
            for _ in range(replays):
                with _autocast(amp):
                    loss, logits = objective.loss(model, x, y, generator=attack_gen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                loss_sum += loss.detach() * x.shape[0]
                correct += (logits.detach().argmax(dim=1) == y).sum()
                evaluated += x.shape[0]
            images += x.shape[0]
            # Reporting forces a device sync, so it happens every few steps, not every step.
            report = step % PROGRESS_EVERY == 0 or step + 1 == steps
            if threat is not None and report:
                clean_correct += _clean_correct(model, x, y, amp)
                clean_seen += x.shape[0]
            for hook in hooks:
                stop = hook.on_step_end(ctx, epoch=epoch + 1, step=step + 1)
                if stop is not None:
                    break
            if progress is not None and report:
                elapsed = max(time.perf_counter() - tick, 1e-9)
                train_acc = int(correct) / evaluated
                progress(
                    StepInfo(
                        epoch + 1,
                        config.epochs,
                        step + 1,
                        steps,
                        float(loss.detach()),
                        train_acc,
                        images / elapsed,
                        clean_accuracy=int(clean_correct) / clean_seen if clean_seen else None,
                        robust_accuracy=train_acc if threat is not None else None,
                    )
                )
            if stop is not None:
                result.stopped = _stopped(stop, epoch + 1, step + 1)
                break
        seconds = time.perf_counter() - tick
        entry: dict[str, float] = {
            "epoch": float(epoch + 1),
            "loss": float(loss_sum) / max(1, evaluated),
            "train_accuracy": int(correct) / max(1, evaluated),
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": seconds,
            "samples_per_second": images / max(seconds, 1e-9),
        }
        if threat is not None:
            entry["train_robust_accuracy"] = entry["train_accuracy"]
            entry["train_clean_accuracy"] = int(clean_correct) / max(1, clean_seen)
        if result.stopped is None:
            for hook in hooks:
                stop = hook.on_epoch_end(ctx, epoch=epoch + 1)
                if stop is not None:
                    result.stopped = _stopped(stop, epoch + 1, 0)
                    break
        for hook in hooks:
            entry.update(hook.metrics())
        if result.stopped is None:
            # Validation measures the weights that would be delivered: the EMA when there is one.
            tock = time.perf_counter()
            final = ema.module if ema is not None else model
            if val_data is not None:
                entry["val_accuracy"] = accuracy(final, val_data, device=device)
            if holdout is not None and threat is not None:
                clean, robust = robust_accuracy(
                    final, holdout, threat, steps=config.robust_val_steps, seed=config.seed + 2, device=device
                )
                entry["holdout_accuracy"], entry["holdout_robust_accuracy"] = clean, robust
                if best is None or (robust, clean) > (
                    best["holdout_robust_accuracy"],
                    best["holdout_accuracy"],
                ):
                    best = {
                        "epoch": epoch + 1,
                        "holdout_robust_accuracy": robust,
                        "holdout_accuracy": clean,
                        "model": {k: v.detach().clone() for k, v in final.state_dict().items()},
                    }
            entry["val_seconds"] = time.perf_counter() - tock
        else:
            entry["stopped"] = 1.0
            logger.warning("training stopped: %s", result.stopped["reason"])
        result.history.append(entry)
        result.seconds += seconds
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": {
                        "shuffle": shuffle_gen.get_state(),
                        "attack": attack_gen.get_state().cpu(),
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if cuda else None,
                    },
                    "ema": ema.state_dict() if ema is not None else None,
                    "objective_state": stateful.state_dict() if stateful is not None else {},
                    "callbacks": [hook.state_dict() for hook in hooks],
                    "best": best,
                    "stopped": result.stopped,
                    "history": result.history,
                    "config": record,
                    "seconds": result.seconds,
                },
            )
    _deliver(model, ema, best, config, result)
    model.eval()
    return result


@torch.no_grad()
def _clean_correct(model: nn.Module, x: Tensor, y: Tensor, amp: bool) -> Tensor:
    with eval_mode(model), _autocast(amp):
        hits: Tensor = (model(x).argmax(dim=1) == y).sum()
    return hits


def _stopped(stop: Stop, epoch: int, step: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "step": step,
        "reason": stop.reason,
        "restored_epoch": stop.restored_epoch,
        "restored_step": stop.restored_step,
    }


def _deliver(
    model: nn.Module, ema: EMA | None, best: dict[str, Any] | None, config: TrainConfig, result: TrainResult
) -> None:
    """Leave in ``model`` the weights to deliver: the most robust epoch's, else the EMA's, else the last."""
    if config.select == "best" and best is not None:
        model.load_state_dict(best["model"])
        result.weights, result.best_epoch = "best", int(best["epoch"])
    elif ema is not None:
        model.load_state_dict(ema.module.state_dict())
        result.weights = "ema"


def _without_epochs(value: Any) -> Any:
    """Settings compared on resume: everything but the epoch count, which may be extended."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "epochs"}
    return value
