"""The Attack contract: frozen hyperparameters, ``attack(model, x, y, *, targets, generator) -> x_adv``.

Every attack's output passes through one final ``threat.project`` here, so no attack can return a point
outside the eps-ball or the input bounds, whatever its own code does.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from advrobust.attacks.losses import LossName, attack_loss
from advrobust.contract import check_call, eval_mode
from advrobust.cpu_grad import fast_input_gradients
from advrobust.errors import ConfigError
from advrobust.threat import Norm, ThreatModel, norm_of

_REGISTRY: dict[str, type[Attack]] = {}
#: Samples of a batch whose outputs an attack call checks (logits, not probabilities; finite; classes).
CHECK_PROBE = 8
#: Fooled samples leave an iterative attack's batch once they are at least this fraction of it: the work they
#: would cost is then worth a smaller batch, and fewer distinct batch sizes keep the allocator's heap small.
LEAVE_FRACTION = 1 / 8

A = TypeVar("A", bound="type[Attack]")


@dataclass(frozen=True, kw_only=True)
class Attack(ABC):
    """Base class: subclasses are frozen keyword-only dataclasses of hyperparameters and implement ``run``.

    Shape: x (N, C, H, W) float in threat.bounds, y (N,) int64, targets (N,) int64 or None -> x_adv like x.
    """

    threat: ThreatModel
    name: ClassVar[str] = "attack"
    #: True for attacks that only query the model's outputs (black-box).
    gradient_free: ClassVar[bool] = False
    #: True for attacks that only need the predicted label (decision-based black-box).
    labels_only: ClassVar[bool] = False

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        targets: Tensor | None = None,
        generator: torch.Generator | None = None,
        check: bool = True,
    ) -> Tensor:
        """Attack ``model`` at ``x`` (true labels ``y``); targeted iff ``targets`` is given.

        ``check=False`` skips the input/output contract checks (``evaluate`` has already made them).
        """
        x = x.detach()
        if check:
            self._check(model, x, y, targets)
        with eval_mode(model), fast_input_gradients(model):
            x_adv = self.run(model, x, y, targets, generator)
        return self.threat.project(x_adv.detach(), x)

    def _check(self, model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None) -> None:
        # The model's outputs are checked on a probe of the batch: a full extra forward would cost a
        # one-step attack (FGSM) a third of its time on a ResNet. ``evaluate`` checks every batch in full.
        check_call(model, x, y, targets, self.threat.bounds, CHECK_PROBE)

    @abstractmethod
    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """The algorithm; the model is already in eval mode and the output is projected afterwards."""

    def params(self) -> dict[str, Any]:
        """Hyperparameters as a JSON-able dict (the threat model reported separately)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name == "threat":
                continue
            out[field.name] = getattr(self, field.name)
        return out

    def describe(self) -> str:
        """A short human-readable label such as ``pgd(steps=40, loss=ce)``."""
        inner = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({inner})"


def register_attack(name: str) -> Callable[[A], A]:
    """Register an Attack subclass under ``name`` (used by the CLI and configs)."""

    def decorate(cls: A) -> A:
        if name in _REGISTRY:
            raise ConfigError(f"an attack named {name!r} is already registered: choose another name")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_attacks() -> list[str]:
    """Names of the registered attacks."""
    return sorted(_REGISTRY)


def attack_class(name: str) -> type[Attack]:
    """The Attack subclass registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown attack {name!r}: choose one of {', '.join(list_attacks())}") from None


def create_attack(name: str, *, threat: ThreatModel, **params: Any) -> Attack:
    """Build a registered attack; hyperparameters left as None take the attack's defaults."""
    cls = attack_class(name)
    known = {f.name for f in dataclasses.fields(cls)} - {"threat"}
    unknown = set(params) - known
    if unknown:
        raise ConfigError(
            f"attack {name!r} has no option(s) {', '.join(sorted(unknown))}: its options are {', '.join(sorted(known))}"
        )
    given = {k: v for k, v in params.items() if v is not None}
    return cls(threat=threat, **given)


def input_gradient(
    model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None, loss: LossName
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient of the summed per-sample attack loss with respect to the inputs only.

    Returns (grad, logits, loss per sample). Parameters never accumulate gradients: only ``x`` is asked for.
    Shape: x (N, C, H, W) -> grad like x, logits (N, K), loss (N,).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        per_sample = attack_loss(logits, y, targets, loss)
        (grad,) = torch.autograd.grad(per_sample.sum(), x)
    return grad, logits.detach(), per_sample.detach()


def steepest_direction(grad: Tensor, norm: Norm, *, l1_sparsity: float = 0.95) -> Tensor:
    """The unit-norm ascent direction for ``norm``: sign (linf), normalised gradient (l2),
    or normalised sign on the top coordinates (l1, as in Tramer & Boneh, 2019, arXiv:1904.13000).

    ``l1_sparsity`` is the percentile of |grad| below which coordinates are left out in the l1 step.
    Shape: (N, ...) -> (N, ...).
    """
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        size = norm_of(grad, "l2").clamp_min(1e-12)
        return grad / size.reshape(-1, *([1] * (grad.dim() - 1)))
    flat = grad.reshape(grad.shape[0], -1)
    k = max(1, round((1.0 - l1_sparsity) * flat.shape[1]))
    top = flat.abs().topk(k, dim=1).indices
    direction = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top).sign() / k)
    return direction.reshape(grad.shape)
