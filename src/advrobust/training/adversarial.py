"""What the adversarial objectives share: their base class, the inner maximisation, and the model mode it runs in.

The inner maximisation runs in eval mode by default (``attack_mode="eval"``): its forward passes then leave
batch-norm running statistics untouched (they describe clean and training-adversarial batches, not the
intermediate attack iterates) and dropout is off, so the attack targets the network that is deployed.
``"train"`` attacks the network as it trains (batch statistics, dropout), as some reference code does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from advrobust.attacks.base import steepest_direction
from advrobust.cpu_grad import fast_input_gradients
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

AttackMode = Literal["eval", "train"]
ATTACK_MODES: tuple[str, ...] = get_args(AttackMode)


@contextlib.contextmanager
def attack_context(model: nn.Module, mode: AttackMode) -> Iterator[None]:
    """Every submodule in eval (``"eval"``) or train (``"train"``) mode for the duration, then restored."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def ascend(
    model: nn.Module,
    x: Tensor,
    start: Tensor,
    loss: Callable[[Tensor], Tensor],
    *,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    project_start: bool = True,
) -> Tensor:
    """Projected steepest ascent of a per-sample ``loss(logits)`` from ``start``; returns the last iterate.

    ``project_start=False`` takes the first gradient at ``start`` as given (e.g. outside the bounds, as
    Fast-AT's reference does); every step's result is projected either way.

    Training uses the last iterate (as Madry et al., TRADES and MART do), not the best point an evaluation
    attack keeps. Gradients are taken for the inputs only; the step and projection run in float32 even
    under autocast. Shape: x, start (N, C, H, W) -> x_adv like x, detached, inside ``threat``.
    """
    x = x.detach()
    # The inner maximisation asks for input gradients only: under DDP it runs on the wrapped module, since
    # DDP expects every forward it sees to end in a backward that reaches its parameters.
    if isinstance(model, DistributedDataParallel):
        model = model.module
    x_adv = threat.project(start.detach(), x) if project_start else start.detach()
    with fast_input_gradients(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                value = loss(model(x_adv).float()).sum()
                (grad,) = torch.autograd.grad(value, x_adv)
            x_adv = threat.project(x_adv.detach() + step_size * steepest_direction(grad, threat.norm), x)
    return x_adv


def cross_entropy_of(y: Tensor) -> Callable[[Tensor], Tensor]:
    """Per-sample cross-entropy against ``y``, as a function of the logits. Shape: (N, K) -> (N,)."""
    return lambda logits: F.cross_entropy(logits, y, reduction="none")


def kl_from(probs: Tensor, logits: Tensor) -> Tensor:
    """KL(probs || softmax(logits)) per sample. Shape: (N, K), (N, K) -> (N,)."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), probs, reduction="none").sum(dim=1)


def small_gaussian_start(x: Tensor, generator: torch.Generator | None, scale: float = 0.001) -> Tensor:
    """The start of TRADES and MART: x plus N(0, scale^2) noise. Shape: like x."""
    return x + scale * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _default_threat() -> ThreatModel:
    return ThreatModel(norm="linf", eps=0.3)


@dataclass(frozen=True, kw_only=True)
class AdversarialObjective:
    """Base of the adversarial objectives: a threat model and the checks and params() they share."""

    name: ClassVar[str] = "adversarial"
    threat: ThreatModel = dataclasses.field(default_factory=_default_threat)

    def __post_init__(self) -> None:
        if not isinstance(self.threat, ThreatModel):
            raise ConfigError(
                f"threat must be a ThreatModel, got {type(self.threat).__name__}: "
                "pass threat=ThreatModel(norm='linf', eps=0.3)"
            )

    def params(self) -> dict[str, Any]:
        """Hyperparameters as JSON-able values, the threat model included."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.init:
                value = getattr(self, f.name)
                out[f.name] = value.to_dict() if isinstance(value, ThreatModel) else value
        return out


def check_int(name: str, value: object, low: int = 1) -> None:
    """Raise ConfigError unless ``value`` is an int >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")


def check_number(
    name: str, value: object, *, low: float = 0.0, high: float = math.inf, strict: bool = True
) -> None:
    """Raise ConfigError unless ``value`` is a finite number above ``low`` (or at it, unless strict), <= high."""
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
        and value <= high
    ):
        return
    bound = f"> {low:g}" if strict else f">= {low:g}"
    upper = f" and <= {high:g}" if math.isfinite(high) else ""
    raise ConfigError(f"{name} must be a number {bound}{upper}, got {value!r}")


def check_attack_mode(value: object) -> None:
    if value not in ATTACK_MODES:
        raise ConfigError(f"attack_mode must be 'eval' or 'train', got {value!r}")


@dataclass(frozen=True, kw_only=True)
class RegularizedObjective(AdversarialObjective):
    """Base of TRADES and MART: a robustness term weighted by ``beta``, its x' found by ``steps`` of
    ``step_size`` (default eps / 4) in the model mode ``attack_mode``."""

    beta: float = 6.0
    steps: int = 10
    step_size: float | None = None
    attack_mode: AttackMode = "eval"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("beta", self.beta, strict=False)
        check_int("steps", self.steps)
        if self.step_size is not None:
            check_number("step_size", self.step_size)
        check_attack_mode(self.attack_mode)

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return self.step_size if self.step_size is not None else self.threat.eps / 4
