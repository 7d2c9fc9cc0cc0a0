"""The catastrophic-overfitting guard of Fast-AT: watch PGD accuracy on a fixed batch, restore and stop on collapse."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from advrobust.attacks import PGD
from advrobust.threat import ThreatModel
from advrobust.training.callbacks import Callback, Stop, TrainContext
from advrobust.training.validation import correct_under

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class OverfitGuard(Callback):
    """Early stopping against catastrophic overfitting (Wong, Rice & Kolter, 2020, arXiv:2001.03994, sec. 5).

    At each epoch end (and every ``every`` steps if set) it measures PGD-``steps`` accuracy of the training
    model on the first ``samples`` training images. When that falls more than ``drop`` below the best seen
    at more than ``patience`` checks in a row (or at the run's last check), it restores the weights of the
    last check that passed and stops training. (The paper compares with the previous check and stops at
    once; the best is stricter against a slow slide over several checks, and the patience lets a transient
    dip pass: Fast-AT on MNIST at eps 0.3 can lose 20 points at one epoch end while its learning rate
    climbs and recover them at the next, where a real collapse does not recover.)
    """

    threat: ThreatModel
    every: int | None = None
    samples: int = 512
    steps: int = 10
    drop: float = 0.2
    patience: int = 1
    best: float | None = field(default=None, init=False)
    last: float | None = field(default=None, init=False)
    strikes: int = field(default=0, init=False)
    good: dict[str, Any] | None = field(default=None, init=False, repr=False)
    good_at: tuple[int, int] = field(default=(0, 0), init=False)
    _batch: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)

    def on_train_start(self, ctx: TrainContext) -> None:
        fixed = ctx.data.take(self.samples)
        self._batch = (fixed.images.to(ctx.device).float().div_(255), fixed.labels.to(ctx.device))

    def on_step_end(self, ctx: TrainContext, *, epoch: int, step: int) -> Stop | None:
        if self.every is None or ((epoch - 1) * ctx.steps + step) % self.every != 0 or step == ctx.steps:
            return None  # the last step of an epoch is checked by on_epoch_end
        return self._check(ctx, epoch, step)

    def on_epoch_end(self, ctx: TrainContext, *, epoch: int) -> Stop | None:
        return self._check(ctx, epoch, 0, final=ctx.epochs is not None and epoch >= ctx.epochs)

    def _check(self, ctx: TrainContext, epoch: int, step: int, *, final: bool = False) -> Stop | None:
        assert self._batch is not None, "on_train_start was not called"
        x, y = self._batch
        # A fresh generator per check: the same weights always get the same verdict, resumed or not.
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 7919)
        _, still = correct_under(ctx.model, PGD(threat=self.threat, steps=self.steps), x, y, generator)
        accuracy = float(still.float().mean())
        self.last = accuracy
        if self.best is not None and self.good is not None and accuracy < self.best - self.drop:
            self.strikes += 1
            now = f"epoch {epoch}" + (f" step {step}" if step else "")
            fell = (
                f"PGD-{self.steps} accuracy on {len(y)} training images fell from {self.best:.1%} to "
                f"{accuracy:.1%} at {now}"
            )
            if self.strikes <= self.patience and not final:
                logger.warning("%s; training on and checking again before stopping", fell)
                return None
            ctx.restore(self.good)
            good_epoch, good_step = self.good_at
            where = f"epoch {good_epoch}" + (f" step {good_step}" if good_step else "")
            row = f" ({self.strikes} checks in a row)" if self.strikes > 1 else ""
            reason = f"catastrophic overfitting: {fell}{row}; stopped and restored the weights of {where}"
            return Stop(reason, restored_epoch=good_epoch, restored_step=good_step)
        self.strikes = 0
        self.best = accuracy if self.best is None else max(self.best, accuracy)
        self.good = ctx.snapshot()
        self.good_at = (epoch, step)
        return None

    def metrics(self) -> dict[str, float]:
        return {} if self.last is None else {"guard_robust_accuracy": self.last}

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "last": self.last,
            "good": self.good,
            "good_at": list(self.good_at),
            "strikes": self.strikes,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.last, self.good = state.get("best"), state.get("last"), state.get("good")
        self.strikes = int(state.get("strikes", 0))
        epoch, step = state.get("good_at", (0, 0))
        self.good_at = (int(epoch), int(step))
