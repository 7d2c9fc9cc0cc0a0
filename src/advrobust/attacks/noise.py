"""Random noise: uniform draws from the eps-ball, the baseline any real attack must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, register_attack
from advrobust.attacks.losses import attack_loss, is_adversarial
from advrobust.errors import ConfigError


@register_attack("noise")
@dataclass(frozen=True, kw_only=True)
class RandomNoise(Attack):
    """Uniform random points in the eps-ball (``threat.random_init``), linf / l2 / l1; no gradients.

    Each sample keeps its first fooling draw, otherwise the draw with the highest margin loss (the clean
    input counts as draw zero). Every draw covers the whole batch, so a seed reproduces the run.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    gradient_free: ClassVar[bool] = True
    draws: int = 100

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ConfigError(f"draws must be >= 1, got {self.draws}")

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        with torch.no_grad():
            logits = model(x)
            best, best_loss = x.clone(), attack_loss(logits, y, targets, "margin")
            found = is_adversarial(logits, y, targets)
            for _ in range(self.draws):
                point = self.threat.random_init(x, generator)
                logits = model(point)
                loss = attack_loss(logits, y, targets, "margin")
                fooled = is_adversarial(logits, y, targets)
                better = ~found & (fooled | (loss > best_loss))
                best = torch.where(better.reshape(-1, *([1] * (x.dim() - 1))), point, best)
                best_loss = torch.where(better, loss, best_loss)
                found = found | fooled
        return best
