"""Free adversarial training (Shafahi et al., 2019): replay each batch, reusing every backward for the attack."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.attacks.base import steepest_direction
from advrobust.threat import ThreatModel, project_delta
from advrobust.training.adversarial import AdversarialObjective, check_int, check_number
from advrobust.training.objectives import register_objective


class _Carry:
    """The perturbation carried across replays and batches, and the leaf whose gradient updates it."""

    def __init__(self) -> None:
        self.delta: Tensor | None = None
        self.pending: Tensor | None = None
        self.step: tuple[ThreatModel, float] | None = None

    def settle(self) -> None:
        """Apply the step of the last backward: delta <- project(delta + step * direction(grad)), with the
        threat and step size of the call that took the leaf (under an eps warm-up, that step's eps)."""
        leaf, self.pending = self.pending, None
        if leaf is None or leaf.grad is None or self.delta is None or self.step is None:
            return
        threat, step_size = self.step
        moved = leaf.detach() + step_size * steepest_direction(leaf.grad, threat.norm)
        self.delta[: leaf.shape[0]] = project_delta(moved, threat.norm, threat.eps)

    def take(self, x: Tensor, threat: ThreatModel, step_size: float) -> Tensor:
        """A leaf copy of the perturbation for this batch (the first N rows; zeros on a new shape)."""
        self.step = (threat, step_size)
        if self.delta is not None:
            self.delta = self.delta.to(device=x.device, dtype=x.dtype)
        if self.delta is None or self.delta.shape[1:] != x.shape[1:] or self.delta.shape[0] < x.shape[0]:
            self.delta = torch.zeros_like(x)
        self.pending = self.delta[: x.shape[0]].clone().requires_grad_(True)
        return self.pending


@register_objective("free-at")
@dataclass(frozen=True, kw_only=True)
class FreeAT(AdversarialObjective):
    """ "Adversarial training for free!" (Shafahi et al., 2019, arXiv:1904.12843).

    Each batch is replayed ``replays`` (m) times; every replay's one backward gives both the weight gradient
    and the input gradient, and the perturbation takes a ``step_size`` step (default eps, Algorithm 1) along
    it before the next replay. The perturbation carries over to the next batch. The trainer makes one
    optimizer step per replay, so one epoch costs m passes: pass the paper's epochs / m as ``epochs``.
    The attack shares the training forward pass, so it runs in train mode (there is no ``attack_mode``).
    Surprising: the objective holds state (the carried perturbation); the trainer checkpoints and resets it.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) -> (loss, logits of x + delta (N, K)).
    """

    replays: int = 8
    step_size: float | None = None
    _carry: _Carry = field(default_factory=_Carry, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("replays", self.replays)
        if self.step_size is not None:
            check_number("step_size", self.step_size)

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return self.step_size if self.step_size is not None else self.threat.eps

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        # The previous call's backward filled the leaf's gradient: take that step first.
        self._carry.settle()
        delta = self._carry.take(x, self.threat, self.alpha)
        logits = model(self.threat.clamp(x + delta))
        return F.cross_entropy(logits.float(), y), logits

    def state_dict(self) -> dict[str, Any]:
        self._carry.settle()
        delta = self._carry.delta
        return {} if delta is None else {"delta": delta.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._carry.pending = None
        delta = state.get("delta")
        self._carry.delta = delta.clone() if isinstance(delta, Tensor) else None
