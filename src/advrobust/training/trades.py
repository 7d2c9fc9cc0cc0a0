"""TRADES (Zhang et al., 2019): clean cross-entropy plus beta times the KL between clean and adversarial outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.training.adversarial import (
    RegularizedObjective,
    ascend,
    attack_context,
    kl_from,
    small_gaussian_start,
)
from advrobust.training.objectives import register_objective


@register_objective("trades")
@dataclass(frozen=True, kw_only=True)
class TRADES(RegularizedObjective):
    """TRADES (Zhang et al., 2019, arXiv:1901.08573): CE(f(x), y) + beta * KL(f(x) || f(x')).

    x' maximises the KL by ``steps`` signed-gradient steps from x + 0.001 * N(0, 1), in the model mode
    ``attack_mode`` (the reference code uses eval). Defaults: beta 6 (1/lambda of the paper's MNIST and
    CIFAR-10 results), 10 steps of eps / 4 (its CIFAR-10 schedule, which trains MNIST well in fewer steps;
    the reference MNIST script uses 40 steps of 0.01 at eps 0.3 with beta 1 -- pass those to reproduce it).
    As in the reference code, the KL's clean target is not detached.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) -> (loss, adversarial logits (N, K)).
    """

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        start = small_gaussian_start(x, generator)
        with attack_context(model, self.attack_mode):
            with torch.no_grad():
                target = F.softmax(model(x).float(), dim=1)
            x_adv = ascend(
                model,
                x,
                start,
                lambda logits: kl_from(target, logits),
                threat=self.threat,
                steps=self.steps,
                step_size=self.alpha,
            )
        logits = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits.float(), y)
        robust = kl_from(F.softmax(logits.float(), dim=1), logits_adv).mean()
        return natural + self.beta * robust, logits_adv
