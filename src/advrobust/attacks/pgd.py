"""PGD: projected gradient ascent from random starts, keeping each sample's best point."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advrobust.attacks.base import (
    LEAVE_FRACTION,
    Attack,
    input_gradient,
    register_attack,
    steepest_direction,
)
from advrobust.attacks.losses import LossName, attack_loss, is_adversarial
from advrobust.errors import ConfigError


@register_attack("pgd")
@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected gradient descent (Madry et al., 2018, arXiv:1706.06083), linf / l2 / l1.

    Default step size 2.5 * eps / steps (Madry et al., appendix); starts from ``threat.random_start`` (uniform
    in the linf box, a uniform radius in l2 / l1) unless ``random_start=False``. Over steps and restarts each
    sample keeps its best point: the first one that fools the model, otherwise the one with the highest loss.
    A fooled sample leaves the batch (its result is final), so the cost falls as samples break.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    steps: int = 40
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: LossName = "ce"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.threat.eps / self.steps

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        threat = self.threat
        x = x.detach()  # the run keeps views of x and updates its own buffers in place
        n = x.shape[0]
        # Every row is written back by the end of the first restart: no copy of x needed (fewer pages
        # touched while the attack's own tensors are alive).
        best = torch.empty_like(x)
        # float64 losses stay float64; half-precision ones widen to float32.
        best_loss = torch.full(
            (n,), float("-inf"), device=x.device, dtype=torch.promote_types(x.dtype, torch.float32)
        )
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            # Each restart attacks only the samples no earlier restart fooled (one sync per restart).
            rows = torch.arange(n, device=x.device) if restart == 0 else (~found).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            run = _Run(x, y, targets, rows, best, best_loss, whole=restart == 0)
            x_adv = threat.random_start(run.x, generator) if self.random_start else run.x.clone()
            for i in range(self.steps):
                grad, logits, loss = input_gradient(model, x_adv, run.y, run.targets, self.loss)
                run.keep(x_adv, logits, loss)
                direction = steepest_direction(grad, threat.norm).mul_(self.alpha)
                del grad  # not kept alive through the next step's backward (the peak of memory)
                # x_adv is this run's own buffer (a random start, a clone or a compacted copy): the step and
                # the projection write into it instead of allocating an image-sized tensor per operation.
                x_adv = threat.project_inner_(x_adv.add_(direction), run.x)
                del direction
                if i + 1 < self.steps and _is_check(i + 1):
                    # Per-sample early stop: a fooled sample's result is final, so it leaves the batch.
                    keep_rows = run.compact(found)
                    if keep_rows is None:
                        continue
                    x_adv = x_adv[keep_rows]
                    if run.rows.numel() == 0:
                        break
            if run.rows.numel() > 0:
                with torch.no_grad():
                    logits = model(x_adv)
                run.keep(x_adv, logits, attack_loss(logits, run.y, run.targets, self.loss))
            run.flush(found)
        return best


def _is_check(step: int) -> bool:
    """Steps after which PGD drops fooled samples: 1, 2, 4, 8 and then every 8th (a host sync each)."""
    return step & (step - 1) == 0 or step % 8 == 0


class _Run:
    """The samples one PGD restart still attacks, with their best point so far.

    A fooling point beats any other and is final; among the rest, the higher loss wins. ``rows`` index the
    full batch; results go back into ``best`` / ``best_loss`` / ``found`` when samples leave or at the end.
    ``loss`` holds each sample's best loss, or +inf once a fooling point is kept: one comparison then says
    both "fooled" and "better", seven kernels per step instead of nine (a small model on a GPU is
    launch-bound). Losses of samples not fooled are capped at the largest finite value, so +inf means fooled
    only (a half-precision DLR can divide by a rounded-to-zero denominator).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        rows: Tensor,
        best: Tensor,
        best_loss: Tensor,
        *,
        whole: bool = False,
    ) -> None:
        self.rows = rows
        self.best, self.best_loss = best, best_loss
        if whole:  # the first restart: every row, nothing kept yet (x itself is the starting point)
            self.x, self.y, self.targets = x, y, targets
            self.point, self.loss = x, best_loss.clone()
        else:
            self.x, self.y = x[rows], y[rows]
            self.targets = None if targets is None else targets[rows]
            self.point, self.loss = best[rows], best_loss[rows]
        self.own = not whole  # whether self.point is this run's own buffer (best[rows] is a copy; x is not)

    def keep(self, point: Tensor, logits: Tensor, loss: Tensor) -> None:
        success = is_adversarial(logits, self.y, self.targets)
        kept = self.loss.dtype
        # masked_fill takes the scalar as it is (torch.where would first wrap it in a tensor, every step).
        score = loss.to(kept).clamp_max(torch.finfo(kept).max).masked_fill_(success, math.inf)
        better = score > self.loss  # never once fooled: nothing beats +inf
        mask = better.reshape(-1, *([1] * (point.dim() - 1)))
        if self.own:  # update in place: one buffer for the whole run instead of a new one per step
            torch.where(mask, point, self.point, out=self.point)
        else:  # self.point is the caller's x: never written into
            self.point, self.own = torch.where(mask, point, self.point), True
        self.loss = torch.fmax(self.loss, score)  # fmax: a NaN loss leaves the best one as it was

    def fooled(self) -> Tensor:
        """(n,) bool: the samples whose kept point fools the model."""
        return self.loss == math.inf

    def flush(self, found: Tensor) -> None:
        self.best.index_copy_(0, self.rows, self.point.to(self.best.dtype))
        self.best_loss.index_copy_(0, self.rows, self.loss)  # its own dtype: a slice or clone of best_loss
        found.index_copy_(0, self.rows, self.fooled())

    def compact(self, found: Tensor) -> Tensor | None:
        """Write back and drop the fooled rows once they are ``LEAVE_FRACTION`` of the batch (or all of it);
        returns the kept positions, or None when nothing left."""
        done = self.fooled()
        fooled = int(done.sum())  # a host sync
        if fooled == 0 or fooled < LEAVE_FRACTION * done.numel():
            return None
        self.flush(found)
        keep = (~done).nonzero().squeeze(1)
        self.rows, self.x, self.y = self.rows[keep], self.x[keep], self.y[keep]
        self.targets = None if self.targets is None else self.targets[keep]
        self.point, self.loss = self.point[keep], self.loss[keep]
        self.own = True
        return keep
