"""PGD: projected gradient ascent from random starts, keeping each sample's best point."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, input_gradient, register_attack, steepest_direction
from advrobust.attacks.losses import LossName, attack_loss, is_adversarial
from advrobust.errors import ConfigError


@register_attack("pgd")
@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected gradient descent (Madry et al., 2018, arXiv:1706.06083), linf / l2 / l1.

    Default step size 2.5 * eps / steps (Madry et al., appendix). Over steps and restarts each sample keeps
    its best point: the first one that fools the model, otherwise the one with the highest loss.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    steps: int = 40
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: LossName = "ce"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.threat.eps / self.steps

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        threat = self.threat
        best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

        def keep(point: Tensor, logits: Tensor, loss: Tensor) -> None:
            nonlocal found
            success = is_adversarial(logits, y, targets)
            # A fooling point beats any other; among the rest, the higher loss wins.
            better = (success & ~found) | (~found & ~success & (loss > best_loss))
            best.copy_(torch.where(better.reshape(-1, 1, 1, 1), point, best))
            best_loss.copy_(torch.where(better, loss, best_loss))
            found = found | success

        for _ in range(self.restarts):
            x_adv = threat.random_init(x, generator) if self.random_start else x.clone()
            for _ in range(self.steps):
                grad, logits, loss = input_gradient(model, x_adv, y, targets, self.loss)
                keep(x_adv, logits, loss)
                step = steepest_direction(grad, threat.norm)
                x_adv = threat.project(x_adv + self.alpha * step, x)
            with torch.no_grad():
                logits = model(x_adv)
            keep(x_adv, logits, attack_loss(logits, y, targets, self.loss))
        return best
