"""Training objectives: what loss one batch contributes. Adversarial ones build on the same protocol.

Beyond ``loss`` and ``params``, an objective may declare (the trainer looks for each, none is required):
``replays`` (optimizer steps per batch, as in Free-AT), ``callbacks()`` (trainer hooks, such as Fast-AT's
overfitting guard), ``state_dict()`` / ``load_state_dict()`` (state carried between batches, checkpointed),
``sample_index`` (true: ``loss`` also takes ``index``, the batch's positions in the training data, as
Fast-AT's ``prior_start`` does; the trainer first calls ``reserve_samples(number of training samples)``)
and a ``threat`` (adversarial objectives: the trainer then reports robust accuracy and validates under it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

if TYPE_CHECKING:
    from advrobust.training.callbacks import Callback


@runtime_checkable
class Objective(Protocol):
    """One batch's training loss. Returns (scalar loss, logits the train accuracy is measured on).

    Adversarial objectives return the logits of the points they trained on, so that accuracy is the robust
    train accuracy under the training attack.
    """

    name: ClassVar[str]

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]: ...

    def params(self) -> dict[str, Any]: ...


@runtime_checkable
class StatefulObjective(Protocol):
    """An objective that carries state between batches (checkpointed; ``load_state_dict({})`` resets it)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


_OBJECTIVES: dict[str, type[Any]] = {}
ObjT = TypeVar("ObjT", bound=type[Any])


def register_objective(name: str) -> Callable[[ObjT], ObjT]:
    """Register a training objective class under ``name`` (used by ``advrobust train --defense``)."""

    def decorate(cls: ObjT) -> ObjT:
        if name in _OBJECTIVES:
            raise ConfigError(f"a training objective named {name!r} is already registered")
        cls.name = name
        _OBJECTIVES[name] = cls
        return cls

    return decorate


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def _objective_class(name: str) -> type[Any]:
    try:
        return _OBJECTIVES[name]
    except KeyError:
        raise ConfigError(
            f"unknown training objective {name!r}: choose one of {', '.join(list_objectives())}"
        ) from None


def objective_options(name: str) -> list[str]:
    """The keyword options of the objective registered under ``name`` (``threat`` for adversarial ones)."""
    return [f.name for f in dataclasses.fields(_objective_class(name)) if f.init]


def create_objective(name: str, **params: Any) -> Objective:
    """Build a registered objective; options left as None take the objective's defaults."""
    cls = _objective_class(name)
    known = set(objective_options(name))
    unknown = set(params) - known
    if unknown:
        raise ConfigError(
            f"objective {name!r} has no option(s) {', '.join(sorted(unknown))}"
            + (f": its options are {', '.join(sorted(known))}" if known else "")
        )
    obj: Objective = cls(**{k: v for k, v in params.items() if v is not None})
    return obj


def objective_threat(objective: Objective) -> ThreatModel | None:
    """The threat model an adversarial objective trains against; None for clean objectives."""
    threat = getattr(objective, "threat", None)
    return threat if isinstance(threat, ThreatModel) else None


def objective_replays(objective: Objective) -> int:
    """Optimizer steps the trainer makes on each batch (1 unless the objective declares ``replays``)."""
    replays = getattr(objective, "replays", 1)
    if isinstance(replays, bool) or not isinstance(replays, int) or replays < 1:
        raise ConfigError(f"{objective.name}: replays must be an int >= 1, got {replays!r}")
    return replays


def objective_callbacks(objective: Objective) -> list[Callback]:
    """The trainer hooks an objective asks for (``callbacks()``), e.g. Fast-AT's overfitting guard."""
    make = getattr(objective, "callbacks", None)
    return list(make()) if callable(make) else []


@register_objective("standard")
@dataclass(frozen=True, kw_only=True)
class Standard:
    """Ordinary empirical risk minimisation with cross-entropy (optionally label-smoothed)."""

    name: ClassVar[str] = "standard"
    label_smoothing: float = 0.0

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
