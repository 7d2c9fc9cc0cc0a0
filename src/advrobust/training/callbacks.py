"""Trainer hooks: a callback sees the run after each step and epoch, and may stop it (returning ``Stop``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.data import ImageDataset
from advrobust.training.ema import EMA


@dataclass(frozen=True)
class Stop:
    """A callback's decision to end training, with the reason shown to the user.

    ``restored_epoch`` / ``restored_step`` say which weights the callback put back, if any (step 0 means
    the end of that epoch).
    """

    reason: str
    restored_epoch: int | None = None
    restored_step: int | None = None


@dataclass
class TrainContext:
    """What callbacks see: the model in training (and its EMA), the training data, device, seed, steps per
    epoch and the number of epochs the run is set for (None: not known)."""

    model: nn.Module
    data: ImageDataset
    device: torch.device
    seed: int
    steps: int
    ema: EMA | None = None
    epochs: int | None = None

    def snapshot(self) -> dict[str, Any]:
        """A copy of the weights (the model's, and the EMA's when there is one)."""
        out: dict[str, Any] = {"model": _copy(self.model.state_dict())}
        if self.ema is not None:
            out["ema"] = _copy(self.ema.module.state_dict())
        return out

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Put back the weights of a ``snapshot()``."""
        self.model.load_state_dict(snapshot["model"])
        if self.ema is not None and "ema" in snapshot:
            self.ema.module.load_state_dict(snapshot["ema"])


def _copy(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class Callback:
    """Base class of trainer hooks; every method is optional (a no-op here).

    ``on_step_end`` / ``on_epoch_end`` return ``Stop`` to end training (the trainer then checkpoints and
    stops; a resumed run stays stopped). ``state_dict`` is saved in the checkpoint, so a resumed run
    continues with the same state; ``metrics`` are added to each epoch's history entry.
    """

    def on_train_start(self, ctx: TrainContext) -> None:
        return None

    def on_step_end(self, ctx: TrainContext, *, epoch: int, step: int) -> Stop | None:
        return None

    def on_epoch_end(self, ctx: TrainContext, *, epoch: int) -> Stop | None:
        return None

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None
