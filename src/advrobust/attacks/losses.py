"""Per-sample attack objectives on logits; every one is maximised by the attacker."""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor

from advrobust.errors import ConfigError

LossName = Literal["ce", "margin", "dlr", "dlr-targeted"]
LOSSES: tuple[str, ...] = get_args(LossName)


def _other_max(logits: Tensor, cls: Tensor) -> Tensor:
    """Largest logit among the classes other than ``cls``. Shape: (N, K), (N,) -> (N,)."""
    masked = logits.scatter(1, cls.unsqueeze(1), float("-inf"))
    return masked.amax(dim=1)


def margin(logits: Tensor, cls: Tensor) -> Tensor:
    """z_cls - max_{j != cls} z_j: positive while ``cls`` wins. Shape: (N,)."""
    return logits.gather(1, cls.unsqueeze(1)).squeeze(1) - _other_max(logits, cls)


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Untargeted difference of logits ratio, ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``.

    Croce & Hein, 2020 (arXiv:2003.01690), with pi the classes sorted by logit, descending. Invariant to
    shifting and positively scaling the logits, so it does not saturate as cross-entropy does.
    Needs at least 3 classes. Shape: (N, K), (N,) -> (N,).
    """
    if logits.shape[1] < 3:
        raise ConfigError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}: use loss='margin'")
    top = logits.topk(3, dim=1).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: Tensor, y: Tensor, targets: Tensor) -> Tensor:
    """Targeted DLR, ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (Croce & Hein, 2020, arXiv:2003.01690).

    Needs at least 4 classes. Shape: (N, K), (N,), (N,) -> (N,).
    """
    if logits.shape[1] < 4:
        raise ConfigError(
            f"the targeted DLR loss needs at least 4 classes, got {logits.shape[1]}: use loss='margin'"
        )
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    z_t = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def attack_loss(logits: Tensor, y: Tensor, targets: Tensor | None, loss: LossName) -> Tensor:
    """The objective an attack ascends, per sample. Shape: (N, K), (N,) -> (N,).

    ``ce``: cross-entropy of the true class (untargeted) or minus that of the target (targeted).
    ``margin``: the CW margin (Carlini & Wagner, 2017, arXiv:1608.04644) -- untargeted
    ``max_{j != y} z_j - z_y``, targeted ``z_t - max_{j != t} z_j``; unlike cross-entropy it does not
    saturate when the softmax does.
    ``dlr``: the DLR loss (Croce & Hein, 2020, arXiv:2003.01690), its targeted form when targets are given;
    ``dlr-targeted`` is the targeted form and insists on targets. DLR is invariant to the logits' scale.
    """
    if loss in ("dlr", "dlr-targeted"):
        if targets is not None:
            return dlr_targeted(logits, y, targets)
        if loss == "dlr-targeted":
            raise ConfigError("loss 'dlr-targeted' needs targets: pass targets=, or use loss='dlr'")
        return dlr(logits, y)
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
