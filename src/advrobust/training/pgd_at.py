"""PGD adversarial training (Madry et al., 2018): train on the last iterate of PGD-k."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.training.adversarial import (
    AdversarialObjective,
    AttackMode,
    ascend,
    attack_context,
    check_attack_mode,
    check_int,
    check_number,
    cross_entropy_of,
)
from advrobust.training.objectives import register_objective


@register_objective("pgd-at")
@dataclass(frozen=True, kw_only=True)
class PGDAT(AdversarialObjective):
    """PGD adversarial training (Madry et al., 2018, arXiv:1706.06083).

    Cross-entropy on PGD-``steps`` points from a random start (``ThreatModel.random_start``); ``step_size``
    defaults to 2.5 * eps / steps (Madry et al., appendix). ``clean_weight`` w mixes in the clean loss:
    (1 - w) * adversarial + w * clean (0: pure adversarial training, as in the paper).
    Shape: x (N, C, H, W) in threat.bounds, y (N,) -> (loss, adversarial logits (N, K)).
    """

    steps: int = 7
    step_size: float | None = None
    random_start: bool = True
    clean_weight: float = 0.0
    attack_mode: AttackMode = "eval"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("steps", self.steps)
        if self.step_size is not None:
            check_number("step_size", self.step_size)
        check_number("clean_weight", self.clean_weight, high=1.0, strict=False)
        check_attack_mode(self.attack_mode)

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.threat.eps / self.steps

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        start = self.threat.random_start(x, generator) if self.random_start else x
        with attack_context(model, self.attack_mode):
            x_adv = ascend(
                model,
                x,
                start,
                cross_entropy_of(y),
                threat=self.threat,
                steps=self.steps,
                step_size=self.alpha,
            )
        logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y)
        if self.clean_weight > 0:
            clean = F.cross_entropy(model(x).float(), y)
            loss = (1 - self.clean_weight) * loss + self.clean_weight * clean
        return loss, logits
