"""Training objectives: what loss one batch contributes. Adversarial ones build on the same protocol."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.errors import ConfigError


@runtime_checkable
class Objective(Protocol):
    """One batch's training loss. Returns (scalar loss, logits the train accuracy is measured on)."""

    name: ClassVar[str]

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]: ...

    def params(self) -> dict[str, Any]: ...


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


def create_objective(name: str, **params: Any) -> Objective:
    """Build a registered objective; options left as None take the objective's defaults."""
    try:
        cls = _OBJECTIVES[name]
    except KeyError:
        raise ConfigError(
            f"unknown training objective {name!r}: choose one of {', '.join(list_objectives())}"
        ) from None
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - known
    if unknown:
        raise ConfigError(f"objective {name!r} has no option(s) {', '.join(sorted(unknown))}")
    obj: Objective = cls(**{k: v for k, v in params.items() if v is not None})
    return obj


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
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
