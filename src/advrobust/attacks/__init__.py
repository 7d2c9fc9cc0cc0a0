"""Attacks: each a frozen dataclass of hyperparameters, registered by name."""

from __future__ import annotations

from advrobust.attacks.adaptive import BPDA, EOT, adapt
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
from advrobust.attacks.deepfool import DeepFool
from advrobust.attacks.fab import FAB
from advrobust.attacks.fgsm import FGSM
from advrobust.attacks.hopskipjump import HopSkipJump
from advrobust.attacks.losses import LossName, attack_loss, dlr, dlr_targeted, is_adversarial, margin
from advrobust.attacks.noise import RandomNoise
from advrobust.attacks.pgd import PGD
from advrobust.attacks.square import Square

__all__ = [
    "APGD",
    "BPDA",
    "CW",
    "EOT",
    "FAB",
    "FGSM",
    "PGD",
    "Attack",
    "DeepFool",
    "HopSkipJump",
    "LossName",
    "RandomNoise",
    "Square",
    "adapt",
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
