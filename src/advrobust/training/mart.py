"""MART (Wang et al., 2020): boosted cross-entropy on adversarial points plus a KL weighted towards misclassified inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.training.adversarial import (
    RegularizedObjective,
    ascend,
    attack_context,
    cross_entropy_of,
    kl_from,
    small_gaussian_start,
)
from advrobust.training.objectives import register_objective


@register_objective("mart")
@dataclass(frozen=True, kw_only=True)
class MART(RegularizedObjective):
    """Misclassification-aware adversarial training (Wang et al., ICLR 2020, "Improving adversarial robustness
    requires revisiting misclassified examples").

    Loss: BCE(f(x'), y) + beta * KL(f(x) || f(x')) * (1 - f_y(x)), where the boosted cross-entropy BCE adds
    -log(1 - p_j(x')) for the most probable wrong class j. x' is PGD on cross-entropy from
    x + 0.001 * N(0, 1), ``steps`` of ``step_size`` (default 10 of eps / 4, the paper's); beta 6 as in the paper.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) -> (loss, adversarial logits (N, K)).
    """

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        start = small_gaussian_start(x, generator)
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
        logits = model(x)
        logits_adv = model(x_adv)
        probs_adv = F.softmax(logits_adv.float(), dim=1)
        wrong = probs_adv.scatter(1, y.unsqueeze(1), float("-inf")).argmax(dim=1)
        p_wrong = probs_adv.gather(1, wrong.unsqueeze(1)).squeeze(1)
        # 1.0001: -log(1 - p) stays finite when p rounds to 1 (the reference code's constant).
        boosted = F.cross_entropy(logits_adv.float(), y) - torch.log(1.0001 - p_wrong).mean()
        probs = F.softmax(logits.float(), dim=1)
        p_true = probs.gather(1, y.unsqueeze(1)).squeeze(1)
        robust = (kl_from(probs, logits_adv) * (1.0000001 - p_true)).mean()
        return boosted + self.beta * robust, logits_adv
