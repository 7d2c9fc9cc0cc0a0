"""Per-sample attack objectives on logits; every one is maximised by the attacker."""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor

LossName = Literal["ce", "margin"]
LOSSES: tuple[str, ...] = get_args(LossName)


def _other_max(logits: Tensor, cls: Tensor) -> Tensor:
    """Largest logit among the classes other than ``cls``. Shape: (N, K), (N,) -> (N,)."""
    masked = logits.scatter(1, cls.unsqueeze(1), float("-inf"))
    return masked.amax(dim=1)


def margin(logits: Tensor, cls: Tensor) -> Tensor:
    """z_cls - max_{j != cls} z_j: positive while ``cls`` wins. Shape: (N,)."""
    return logits.gather(1, cls.unsqueeze(1)).squeeze(1) - _other_max(logits, cls)


def attack_loss(logits: Tensor, y: Tensor, targets: Tensor | None, loss: LossName) -> Tensor:
    """The objective an attack ascends, per sample. Shape: (N, K), (N,) -> (N,).

    ``ce``: cross-entropy of the true class (untargeted) or minus that of the target (targeted).
    ``margin``: the CW margin (Carlini & Wagner, 2017, arXiv:1608.04644) -- untargeted
    ``max_{j != y} z_j - z_y``, targeted ``z_t - max_{j != t} z_j``; unlike cross-entropy it does not
    saturate when the softmax does.
    """
    if loss == "ce":
        if targets is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, targets, reduction="none")
    if targets is None:
        return -margin(logits, y)
    return margin(logits, targets)


def is_adversarial(logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    """Success per sample: misclassified (untargeted) or classified as the target. Shape: (N,) bool."""
    pred = logits.argmax(dim=1)
    return pred != y if targets is None else pred == targets
