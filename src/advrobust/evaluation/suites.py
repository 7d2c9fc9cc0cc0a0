"""Attack suites: named, reproducible recipes of attacks for one threat model."""

from __future__ import annotations

from typing import Literal, get_args

from advrobust.attacks.base import Attack, create_attack
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

SuiteName = Literal["quick", "standard"]
SUITES: tuple[str, ...] = get_args(SuiteName)


def build_suite(name: str, threat: ThreatModel) -> list[Attack]:
    """The attacks of suite ``name`` for ``threat``, in cascade order.

    ``quick``: APGD with cross-entropy. ``standard``: the AutoAttack recipe (Croce & Hein, 2020,
    arXiv:2003.01690): APGD-CE, APGD-T with the targeted DLR loss over the 9 most likely wrong classes,
    FAB-T over 9 target classes, and Square with 5,000 queries (linf, l2); for l1, APGD-CE and APGD-T.
    """
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}: choose one of {', '.join(SUITES)}")
    if name == "quick":
        return [create_attack("apgd", threat=threat, loss="ce", steps=100)]
    attacks = [
        create_attack("apgd", threat=threat, loss="ce", steps=100),
        create_attack(
            "apgd", threat=threat, loss="dlr-targeted", targeted=True, n_target_classes=9, steps=100
        ),
    ]
    if threat.norm in ("linf", "l2"):
        attacks.append(create_attack("fab", threat=threat, targeted=True, n_target_classes=9, steps=100))
        attacks.append(create_attack("square", threat=threat, queries=5000))
    return attacks
