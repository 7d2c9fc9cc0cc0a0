"""Fast adversarial training (Wong, Rice & Kolter, 2020): FGSM from a random start, with an overfitting guard."""

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
from advrobust.training.callbacks import Callback
from advrobust.training.guard import OverfitGuard
from advrobust.training.objectives import register_objective


@register_objective("fast-at")
@dataclass(frozen=True, kw_only=True)
class FastAT(AdversarialObjective):
    """ "Fast is better than free" adversarial training (Wong, Rice & Kolter, 2020, arXiv:2001.03994).

    One FGSM step of ``step_size`` (default 1.25 * eps) from a uniform random start in the eps-ball, then
    the projection onto the eps-ball and the bounds. As in the paper's code the start is not clipped to the
    bounds (``clip_start=True`` clips it): on MNIST, whose pixels sit mostly at 0 or 1, a clipped start
    followed by a 1.25 eps step lands on the same corner for nearly every saturated pixel, i.e. plain FGSM
    training, which overfits catastrophically (PGD-40 accuracy 2-12% in our full-MNIST runs). FGSM
    training can overfit catastrophically (robustness to PGD collapses within an epoch), so ``guard`` (on by
    default) measures PGD-``guard_steps`` accuracy on the first ``guard_samples`` training images at each
    epoch end (and every ``guard_every`` steps if set); when it falls more than ``guard_drop`` below its best
    at more than ``guard_patience`` checks in a row (default 1: one dip that recovers at the next check passes),
    the last good weights are restored and training stops. The paper pairs it with a cyclic learning rate:
    ``schedule="cyclic"``.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) -> (loss, adversarial logits (N, K)).
    """

    step_size: float | None = None
    random_start: bool = True
    clip_start: bool = False
    attack_mode: AttackMode = "eval"
    guard: bool = True
    guard_every: int | None = None
    guard_samples: int = 512
    guard_steps: int = 10
    guard_drop: float = 0.2
    guard_patience: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_size is not None:
            check_number("step_size", self.step_size)
        check_attack_mode(self.attack_mode)
        if self.guard_every is not None:
            check_int("guard_every", self.guard_every)
        check_int("guard_samples", self.guard_samples)
        check_int("guard_steps", self.guard_steps)
        check_number("guard_drop", self.guard_drop, high=1.0)
        check_int("guard_patience", self.guard_patience, low=0)

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return self.step_size if self.step_size is not None else 1.25 * self.threat.eps

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        start = self.threat.random_init(x, generator, clip=self.clip_start) if self.random_start else x
        with attack_context(model, self.attack_mode):
            x_adv = ascend(
                model,
                x,
                start,
                cross_entropy_of(y),
                threat=self.threat,
                steps=1,
                step_size=self.alpha,
                project_start=self.clip_start,
            )
        logits = model(x_adv)
        return F.cross_entropy(logits.float(), y), logits

    def callbacks(self) -> list[Callback]:
        if not self.guard:
            return []
        return [
            OverfitGuard(
                threat=self.threat,
                every=self.guard_every,
                samples=self.guard_samples,
                steps=self.guard_steps,
                drop=self.guard_drop,
                patience=self.guard_patience,
            )
        ]
