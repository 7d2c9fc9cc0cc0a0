"""Adaptive attacks for defended models (Athalye, Carlini & Wagner, 2018, arXiv:1802.00420).

``BPDA`` and ``EOT`` wrap any gradient attack: they hand the wrapped attack a view of the model whose
backward pass is the defense's surrogate (BPDA) or whose forward pass averages over the defense's randomness
(EOT), and the wrapped attack runs unchanged. A model tells them what it needs by declaring
``differentiable`` (False: it offers ``bpda_forward``) and ``randomized``; ``adapt`` picks the wrappers
from those declarations, and the ``adaptive`` suite uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, register_attack
from advrobust.attacks.pgd import PGD
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

# Stands for "the wrapped attack's threat model": compared by identity, never used as a threat.
_FROM_ATTACK = ThreatModel(eps=0.0)


def is_differentiable(model: nn.Module) -> bool:
    """What ``model`` declares (True when it declares nothing): does autograd give useful gradients?"""
    return bool(getattr(model, "differentiable", True))


def is_randomized(model: nn.Module) -> bool:
    """What ``model`` declares (False when it declares nothing): does each forward pass draw randomness?"""
    return bool(getattr(model, "randomized", False))


def _bpda_logits(model: nn.Module, x: Tensor) -> Tensor:
    surrogate = getattr(model, "bpda_forward", None)
    if surrogate is None:
        if not is_differentiable(model):
            raise ConfigError(
                f"{type(model).__name__} declares differentiable=False but has no bpda_forward(x): "
                "give it one (forward values, surrogate gradients), e.g. wrap it in InputTransformDefense"
            )
        out: Tensor = model(x)
        return out
    result: Tensor = surrogate(x)
    return result


class BPDAModel(nn.Module):
    """The model as BPDA sees it: its real forward values, its surrogate's gradients (``bpda_forward``).

    A model that declares itself differentiable and has no ``bpda_forward`` is passed through unchanged.
    Shape: x (N, C, H, W) -> logits (N, K).
    """

    differentiable = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def randomized(self) -> bool:
        return is_randomized(self.model)

    def forward(self, x: Tensor) -> Tensor:
        return _bpda_logits(self.model, x)


class EOTModel(nn.Module):
    """The model's logits averaged over ``samples`` forward passes: an estimate of their expectation.

    Each draw is a separate forward call, so a model that draws its randomness once per call still gets
    ``samples`` independent draws. Exposes ``bpda_forward`` (the average of the model's) when the model is
    not differentiable, so that BPDA and EOT compose in either order.
    Shape: x (N, C, H, W) -> logits (N, K).
    """

    randomized = False

    def __init__(self, model: nn.Module, samples: int) -> None:
        super().__init__()
        self.model = model
        self.samples = samples

    @property
    def differentiable(self) -> bool:
        return is_differentiable(self.model)

    def forward(self, x: Tensor) -> Tensor:
        total: Tensor = self.model(x)
        for _ in range(self.samples - 1):
            total = total + self.model(x)
        return total / self.samples

    def bpda_forward(self, x: Tensor) -> Tensor:
        total = _bpda_logits(self.model, x)
        for _ in range(self.samples - 1):
            total = total + _bpda_logits(self.model, x)
        return total / self.samples


@dataclass(frozen=True, kw_only=True)
class _Wrapper(Attack):
    """Shared by BPDA and EOT: the wrapped attack, and the threat model taken from it."""

    attack: Attack | None = None
    threat: ThreatModel = _FROM_ATTACK

    def __post_init__(self) -> None:
        if self.attack is None:
            if self.threat is _FROM_ATTACK:
                raise ConfigError(
                    f"{self.name} needs an attack to wrap: pass e.g. attack=PGD(threat=ThreatModel(eps=0.3))"
                )
            object.__setattr__(self, "attack", PGD(threat=self.threat))
        elif not isinstance(self.attack, Attack):
            raise ConfigError(f"{self.name} wraps an Attack, got {type(self.attack).__name__}")
        elif self.threat is _FROM_ATTACK:
            object.__setattr__(self, "threat", self.attack.threat)
        elif self.threat != self.attack.threat:
            raise ConfigError(
                f"{self.name} was given {self.threat} but wraps an attack under {self.attack.threat}: "
                "leave threat out, it is taken from the wrapped attack"
            )

    @property
    def inner(self) -> Attack:
        """The wrapped attack."""
        assert self.attack is not None  # set in __post_init__
        return self.attack

    def params(self) -> dict[str, Any]:
        out = super().params()
        out["attack"] = {"name": self.inner.name, **self.inner.params()}
        return out


@register_attack("bpda")
@dataclass(frozen=True, kw_only=True)
class BPDA(_Wrapper):
    """Backward pass differentiable approximation (Athalye, Carlini & Wagner, 2018, arXiv:1802.00420).

    Runs ``attack`` (default PGD under ``threat``) on the model's ``bpda_forward``: the real forward pass,
    with each non-differentiable part replaced by its surrogate in the backward pass only (straight-through
    for the identity surrogate). The success checks inside see the real forward values. ``threat`` is the
    wrapped attack's.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        return self.inner(BPDAModel(model), x, y, targets=targets, generator=generator, check=False)

    def describe(self) -> str:
        return f"bpda({self.inner.describe()})"


@register_attack("eot")
@dataclass(frozen=True, kw_only=True)
class EOT(_Wrapper):
    """Expectation over transformation (Athalye et al., 2018, arXiv:1707.07397 and arXiv:1802.00420).

    Runs ``attack`` (default PGD under ``threat``) on the model's logits averaged over ``samples`` random
    draws, so each step ascends the attack's loss of the expected logits (for the margin loss, the mean of
    the per-draw margins while the runner-up class agrees). Averaging logits, not per-draw losses, lets EOT
    wrap any attack unchanged; APGD's own ``eot_iter`` averages per-draw loss gradients instead (``adapt``
    prefers it). The attack's per-step success checks see the averaged logits; the evaluation's final check
    uses the real, random model.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    samples: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"samples must be an integer >= 1, got {self.samples!r}: e.g. 10")

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        return self.inner(
            EOTModel(model, self.samples), x, y, targets=targets, generator=generator, check=False
        )

    def describe(self) -> str:
        return f"eot(samples={self.samples}, {self.inner.describe()})"


def adapt(attack: Attack, model: nn.Module, *, samples: int = 20) -> Attack:
    """``attack`` made adaptive to what ``model`` declares: EOT over ``samples`` draws when it is randomized,
    then BPDA when it is not differentiable. Gradient-free attacks are returned unchanged.

    An attack with its own ``eot_iter`` option (APGD) gets ``eot_iter=samples`` instead of the EOT wrapper:
    it averages the per-draw loss gradients. The default of 20 draws follows AutoAttack's randomized version.
    """
    if attack.gradient_free:
        return attack
    adapted = attack
    if is_randomized(model):
        names = {f.name for f in dataclasses.fields(attack)}
        if "eot_iter" in names:
            adapted = dataclasses.replace(attack, eot_iter=samples)  # type: ignore[call-arg]
        else:
            adapted = EOT(attack=attack, samples=samples)
    if not is_differentiable(model):
        adapted = BPDA(attack=adapted)
    return adapted


def unadapted(attacks: Sequence[Attack], model: nn.Module) -> list[Attack]:
    """The gradient attacks among ``attacks`` that ignore what ``model`` declares: no BPDA around one when the
    model is not differentiable, no EOT (wrapper or ``eot_iter`` > 1) when it is randomized. Their robust
    accuracy on such a model is only an upper bound, often far above the truth."""
    need_bpda, need_eot = not is_differentiable(model), is_randomized(model)
    found = []
    for attack in attacks:
        if attack.gradient_free:
            continue
        inner, bpda, eot = attack, False, False
        while isinstance(inner, _Wrapper):
            bpda |= isinstance(inner, BPDA)
            eot |= isinstance(inner, EOT) and inner.samples > 1
            inner = inner.inner
        eot |= int(getattr(inner, "eot_iter", 1)) > 1
        if (need_bpda and not bpda) or (need_eot and not eot):
            found.append(attack)
    return found
