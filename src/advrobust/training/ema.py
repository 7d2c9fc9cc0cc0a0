"""An exponential moving average of a model's weights, updated after every optimizer step."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from advrobust.errors import ConfigError


class EMA:
    """EMA of ``model``'s parameters and floating buffers, kept in a copy of the model (``module``).

    The decay warms up as ``min(decay, (1 + t) / (10 + t))`` after t updates (as TensorFlow's
    ExponentialMovingAverage with ``num_updates``), so short runs are not dominated by the initial weights.
    Integer buffers (batch-norm counters) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema_decay must lie in (0, 1), got {decay!r}: try 0.999")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine, theirs = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in mine.items() if v.is_floating_point()]
        if floats:
            torch._foreach_lerp_([mine[k] for k in floats], [theirs[k].detach() for k in floats], 1.0 - decay)
        for key, value in mine.items():
            if not value.is_floating_point():
                value.copy_(theirs[key])

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
