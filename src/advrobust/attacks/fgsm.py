"""FGSM: one step of size eps along the steepest-ascent direction of the loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, input_gradient, register_attack, steepest_direction
from advrobust.attacks.losses import LossName


@register_attack("fgsm")
@dataclass(frozen=True, kw_only=True)
class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al., 2015, arXiv:1412.6572); the fast gradient method for l2/l1.

    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    loss: LossName = "ce"

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        grad, _, _ = input_gradient(model, x, y, targets, self.loss)
        return x + self.threat.eps * steepest_direction(grad, self.threat.norm, l1_sparsity=1.0)
