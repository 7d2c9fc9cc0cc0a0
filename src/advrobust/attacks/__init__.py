"""Attacks: each a frozen dataclass of hyperparameters, registered by name."""

from __future__ import annotations

from advrobust.attacks.apgd import APGD, apgd_checkpoints
from advrobust.attacks.base import (
    Attack,
    attack_class,
    create_attack,
    input_gradient,
    list_attacks,
    register_attack,
)
from advrobust.attacks.cw import CW
from advrobust.attacks.fgsm import FGSM
from advrobust.attacks.losses import LossName, attack_loss, dlr, dlr_targeted, is_adversarial, margin
from advrobust.attacks.pgd import PGD

__all__ = [
    "APGD",
    "CW",
    "FGSM",
    "PGD",
    "Attack",
    "LossName",
    "apgd_checkpoints",
    "attack_class",
    "attack_loss",
    "create_attack",
    "dlr",
    "dlr_targeted",
    "input_gradient",
    "is_adversarial",
    "list_attacks",
    "margin",
    "register_attack",
]
