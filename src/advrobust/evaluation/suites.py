"""Attack suites: named, reproducible recipes of attacks for one threat model."""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

from advrobust.attacks.adaptive import adapt, is_randomized
from advrobust.attacks.base import Attack, create_attack
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

SuiteName = Literal["quick", "standard", "adaptive"]
SUITES: tuple[str, ...] = get_args(SuiteName)
#: Draws of the defense's randomness per gradient in the adaptive suite (AutoAttack's randomized version).
ADAPTIVE_EOT_SAMPLES = 20


def build_suite(name: str, threat: ThreatModel, model: nn.Module | None = None) -> list[Attack]:
    """The attacks of suite ``name`` for ``threat``, in cascade order.

    ``quick``: APGD with cross-entropy. ``standard``: the AutoAttack recipe (Croce & Hein, 2020,
    arXiv:2003.01690): APGD-CE, APGD-T with the targeted DLR loss over the 9 most likely wrong classes,
    FAB-T over 9 target classes, and Square with 5,000 queries (linf, l2); for l1, APGD-CE and APGD-T. In l2,
    FAB-T runs twice, linearising the target against its strongest rival and then, on the samples still
    standing, against the true class as AutoAttack's FAB-T does: each finds points the other misses. On the
    MNIST models measured few samples were left for the second (36 of 1,000 after the first, 16.8 s of a
    148 s suite); on a model still robust after the first it costs as much again. Not in linf, where it would
    double the suite's costliest member on most samples.
    ``adaptive`` (needs ``model``): the standard recipe made adaptive to what the model declares (BPDA
    around the gradient attacks when it is not differentiable, see ``attacks.adapt``); for a randomized
    model, AutoAttack's version for randomized defenses instead: APGD-CE and APGD-DLR with 20 EOT draws.
    """
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}: choose one of {', '.join(SUITES)}")
    if name == "adaptive":
        if model is None:
            raise ConfigError("the adaptive suite adapts to a model: pass model= (evaluate does)")
        if is_randomized(model):
            base = [
                create_attack("apgd", threat=threat, loss="ce", steps=100),
                create_attack("apgd", threat=threat, loss="dlr", steps=100),
            ]
        else:
            base = build_suite("standard", threat)
        return [adapt(attack, model, samples=ADAPTIVE_EOT_SAMPLES) for attack in base]
    if name == "quick":
        return [create_attack("apgd", threat=threat, loss="ce", steps=100)]
    attacks = [
        create_attack("apgd", threat=threat, loss="ce", steps=100),
        create_attack("apgd", threat=threat, loss="dlr", targeted=True, n_target_classes=9, steps=100),
    ]
    if threat.norm in ("linf", "l2"):
        attacks.append(create_attack("fab", threat=threat, targeted=True, n_target_classes=9, steps=100))
        if threat.norm == "l2":
            attacks.append(
                create_attack(
                    "fab", threat=threat, targeted=True, n_target_classes=9, steps=100, rival="label"
                )
            )
        attacks.append(create_attack("square", threat=threat, queries=5000))
    return attacks
