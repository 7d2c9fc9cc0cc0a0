"""The training loop shared by every objective: seeded, checkpointed every epoch, resumable exactly."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from advrobust.data import BatchLoader, ImageDataset
from advrobust.errors import ConfigError
from advrobust.training.checkpoint import load_checkpoint, save_checkpoint
from advrobust.training.objectives import Objective, Standard

CHECKPOINT_NAME = "checkpoint.pt"
PROGRESS_EVERY = 10


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings. Defaults suit the small MNIST CNNs (Adam, lr 1e-3)."""

    epochs: int = 5
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: use sgd or adam")
        if self.schedule not in ("constant", "cosine", "onecycle"):
            raise ConfigError(f"unknown schedule {self.schedule!r}: use constant, cosine or onecycle")


@dataclass(frozen=True)
class StepInfo:
    """What a progress callback receives after each batch."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    accuracy: float
    samples_per_second: float


@dataclass
class TrainResult:
    """Per-epoch history (loss, train accuracy, validation accuracy, lr, seconds) and totals."""

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history, "seconds": self.seconds, "resumed_from": self.resumed_from}


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    total = config.epochs * steps
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


@torch.no_grad()
def accuracy(
    model: nn.Module, data: ImageDataset, *, batch_size: int = 512, device: torch.device | None = None
) -> float:
    """Clean accuracy of ``model`` on ``data`` (eval mode, restored afterwards)."""
    from advrobust.contract import eval_mode

    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = torch.zeros((), dtype=torch.long, device=device)
    with eval_mode(model):
        for x, y in BatchLoader(data, batch_size=batch_size, device=device):
            correct += (model(x).argmax(dim=1) == y).sum()
    return int(correct) / max(1, len(data))


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
) -> TrainResult:
    """Train ``model`` in place on ``data`` with ``objective``; checkpoint to ``out_dir`` after every epoch.

    With ``resume`` the run continues from ``out_dir/checkpoint.pt`` (model, optimizer, schedule, RNG and
    history), so an interrupted run ends with the same weights as an uninterrupted one.
    Shape: data images (N, C, H, W) uint8, converted to [0, 1] per batch.
    """
    objective = objective or Standard()
    config = config or TrainConfig()
    device = (
        torch.device(device)
        if device is not None
        else next((p.device for p in model.parameters()), torch.device("cpu"))
    )
    model.to(device)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    attack_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    loader = BatchLoader(
        data,
        batch_size=config.batch_size,
        shuffle=True,
        generator=shuffle_gen,
        device=device,
        drop_last=False,
    )
    steps = len(loader)
    optimizer = _optimizer(model, config)
    scheduler = _scheduler(optimizer, config, steps)
    result = TrainResult()
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
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        shuffle_gen.set_state(state["rng"]["shuffle"])
        attack_gen.set_state(state["rng"]["attack"].to(attack_gen.get_state().device))
        torch.set_rng_state(state["rng"]["torch"])
        result.history = [dict(h) for h in state["history"]]
        start_epoch = int(state["epoch"])
        result.resumed_from = start_epoch
        result.seconds = float(state.get("seconds", 0.0))

    for epoch in range(start_epoch, config.epochs):
        model.train()
        tick = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        for step, (x, y) in enumerate(loader):
            loss, logits = objective.loss(model, x, y, generator=attack_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * x.shape[0]
            correct += (logits.detach().argmax(dim=1) == y).sum()
            seen += x.shape[0]
            # Reporting forces a device sync, so it happens every few steps, not every step.
            if progress is not None and (step % PROGRESS_EVERY == 0 or step + 1 == steps):
                elapsed = max(time.perf_counter() - tick, 1e-9)
                progress(
                    StepInfo(
                        epoch + 1,
                        config.epochs,
                        step + 1,
                        steps,
                        float(loss.detach()),
                        int(correct) / seen,
                        seen / elapsed,
                    )
                )
        seconds = time.perf_counter() - tick
        entry: dict[str, float] = {
            "epoch": float(epoch + 1),
            "loss": float(loss_sum) / max(1, seen),
            "train_accuracy": int(correct) / max(1, seen),
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": seconds,
            "samples_per_second": seen / max(seconds, 1e-9),
        }
        if val_data is not None:
            entry["val_accuracy"] = accuracy(model, val_data, device=device)
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
                    },
                    "history": result.history,
                    "config": record,
                    "seconds": result.seconds,
                },
            )
    model.eval()
    return result


def _without_epochs(value: Any) -> Any:
    """Settings compared on resume: everything but the epoch count, which may be extended."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "epochs"}
    return value
