"""APGD: step-size-free PGD with momentum and checkpointed step halving (APGD-CE, APGD-DLR, APGD-T)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor, nn

from advrobust.attacks.base import (
    LEAVE_FRACTION,
    Attack,
    input_gradient,
    register_attack,
    steepest_direction,
)
from advrobust.attacks.losses import LossName, is_adversarial
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * steps) at which APGD may halve its step (Croce & Hein, 2020, sec. 3).

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1. Exact fractions,
    so that e.g. 0.41 * 100 is 41 and not 42. Repeated values (few steps) are dropped; w_0 = 0 is included.
    """
    previous, current = Fraction(0), Fraction(22, 100)
    points = [0]
    while current <= 1:
        w = math.ceil(current * steps)
        if w > points[-1]:
            points.append(w)
        previous, current = current, current + max(current - previous - Fraction(3, 100), Fraction(6, 100))
    return points


def _view(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


class _Best:
    """Each sample's best point so far: the first that succeeds, else the one with the highest loss."""

    def __init__(self, x: Tensor) -> None:
        self.point = x.clone()
        self.loss = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        self.found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def keep(self, point: Tensor, loss: Tensor, success: Tensor) -> None:
        better = ~self.found & (success | (loss > self.loss))
        # self.point is this object's own buffer (a clone of x; every point kept is in x's type): in place.
        torch.where(_view(better, point), point, self.point, out=self.point)
        self.loss = torch.where(better, loss, self.loss)
        self.found = self.found | success

    def keep_at(self, rows: Tensor | None, point: Tensor, loss: Tensor, success: Tensor) -> None:
        """``keep`` for the samples at ``rows`` only (None: all of them)."""
        if rows is None:
            self.keep(point, loss, success)
            return
        found, old = self.found[rows], self.loss[rows]
        better = ~found & (success | (loss > old))
        chosen = torch.where(_view(better, point), point, self.point[rows])
        self.point.index_copy_(0, rows, chosen.to(self.point.dtype))
        self.loss.index_copy_(0, rows, torch.where(better, loss, old).to(self.loss.dtype))
        self.found.index_copy_(0, rows, found | success)


@register_attack("apgd")
@dataclass(frozen=True, kw_only=True)
class APGD(Attack):
    """Auto-PGD (Croce & Hein, 2020, arXiv:2003.01690): PGD with momentum ``alpha`` and a step size that
    starts at 2 * eps and halves at checkpoints where progress stalls, restarting from the best point.

    ``loss`` is "ce", "dlr" or "margin". ``targeted=True`` without ``targets`` is APGD-T: one run per each
    of the ``n_target_classes`` highest non-true classes at the clean point, with the targeted form of the
    loss (the paper's APGD-T is ``loss="dlr", targeted=True``), ``restarts`` runs per target; success is
    still any misclassification. Given ``targets``, success means hitting them. Samples already fooled at
    x come back as they are, and each run (restart or target) attacks only the samples still standing.
    ``eot_iter`` averages gradients (and logits) over that many passes, for randomised models.

    l1 follows l1-APGD (Croce & Hein, 2021, arXiv:2103.01208) in a simplified form: steps on the top-k
    coordinates of the gradient (coordinates at the box boundary pointing outwards left out), k set at
    each checkpoint (every 4% of steps) to the sparsity of the best point / 1.5 (initially 20% of the
    coordinates), step size from eps, reset to eps when the best point got sparser, else divided by 1.5
    down to eps / 10. The projection is ``ThreatModel.project`` (l1 ball, then box) rather than the exact
    projection onto their intersection.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    steps: int = 100
    restarts: int = 1
    loss: LossName = "ce"
    rho: float = 0.75
    alpha: float = 0.75
    targeted: bool = False
    n_target_classes: int = 9
    eot_iter: int = 1

    def __post_init__(self) -> None:
        for field in ("steps", "restarts", "n_target_classes", "eot_iter"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{field} must be >= 1, got {getattr(self, field)}")
        if not 0 < self.rho <= 1:
            raise ConfigError(f"rho must be in (0, 1], got {self.rho}: the paper uses 0.75")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}: the paper uses 0.75")

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        x = x.detach()  # the runs write into their own buffers, cloned from x: none may carry a graph
        with torch.no_grad():
            # A randomized model (eot_iter > 1) is judged on its logits averaged over as many draws as the
            # steps use: one draw that happens to misclassify must not leave a sample unattacked.
            logits = model(x)
            for _ in range(self.eot_iter - 1):
                logits = logits + model(x)
            logits = logits / self.eot_iter
        if targets is not None or not self.targeted:
            goals: list[Tensor | None] = [targets]
        else:
            k = min(self.n_target_classes, logits.shape[1] - 1)
            ranked = logits.scatter(1, y.unsqueeze(1), float("-inf")).argsort(dim=1, descending=True)
            goals = list(ranked[:, :k].unbind(dim=1))
        best = _Best(x)
        # Samples already misclassified (or on target) keep x itself and are not attacked.
        best.keep(x, best.loss, is_adversarial(logits, y, targets))
        for goal in goals:
            for _ in range(self.restarts):
                # One sync per run: later runs attack only the samples still standing.
                todo = (~best.found).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return best.point
                sub = _Best(x[todo])
                self._single_run(
                    model,
                    x[todo],
                    y[todo],
                    None if goal is None else goal[todo],
                    targets is not None,
                    sub,
                    generator,
                )
                point, loss, found = best.point[todo], best.loss[todo], best.found[todo]
                take = ~found & (sub.found | (sub.loss > loss))
                best.point[todo] = torch.where(_view(take, point), sub.point, point)
                best.loss[todo] = torch.where(take, sub.loss, loss)
                best.found[todo] = found | sub.found
        return best.point

    def _gradient(
        self, model: nn.Module, x: Tensor, y: Tensor, goal: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        grad, logits, loss = input_gradient(model, x, y, goal, self.loss)
        for _ in range(self.eot_iter - 1):
            g, z, f = input_gradient(model, x, y, goal, self.loss)
            grad, logits, loss = grad + g, logits + z, loss + f
        n = self.eot_iter
        return grad / n, logits / n, loss / n

    def _single_run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        goal: Tensor | None,
        hit_goal: bool,
        best: _Best,
        generator: torch.Generator | None,
    ) -> None:
        """One APGD run from a random start on a (sub)batch, recording into ``best``.

        Every state is per sample, so at each checkpoint the fooled samples (final: the first fooling point
        wins) leave the batch and the rest continue exactly as they would have.
        """
        threat = self.threat
        n = x.shape[0]
        success_targets = goal if hit_goal else None
        l1 = threat.norm == "l1"
        eta = torch.full((n,), (1.0 if l1 else 2.0) * threat.eps, device=x.device, dtype=x.dtype)
        x_cur = threat.random_init(x, generator)
        grad, logits, loss = self._gradient(model, x_cur, y, goal)
        rows: Tensor | None = None  # the samples of ``best`` still attacked; None: all
        best.keep(x_cur, loss, is_adversarial(logits, y, success_targets))
        x_prev = x_cur
        x_max, loss_max, grad_max = x_cur, loss, grad  # the schedule's best point (highest loss)
        loss_prev = loss
        increases = torch.zeros(n, device=x.device, dtype=x.dtype)
        loss_max_at_check = loss_max
        reduced_at_check = torch.zeros(n, dtype=torch.bool, device=x.device)
        dims = x[0].numel()
        k_frac = torch.full((n,), 0.2, device=x.device, dtype=x.dtype)
        sparsity_at_check = torch.full((n,), float(dims), device=x.device, dtype=x.dtype)
        if l1:
            every = max(1, math.ceil(0.04 * self.steps))
            checkpoints = list(range(0, self.steps + 1, every))
        else:
            checkpoints = apgd_checkpoints(self.steps)
        last_check = 0
        for i in range(self.steps):
            if l1:
                step = _sparse_direction(grad, x_cur, k_frac, threat)
            else:
                step = steepest_direction(grad, threat.norm)
            x_next = momentum_step(threat, x, x_cur, x_prev, step, eta, 1.0 if i == 0 else self.alpha)
            del step
            x_prev, x_cur = x_cur, x_next
            grad, logits, loss = self._gradient(model, x_cur, y, goal)
            best.keep_at(rows, x_cur, loss, is_adversarial(logits, y, success_targets))
            increases = increases + (loss > loss_prev).to(x.dtype)
            loss_prev = loss
            improved = loss > loss_max
            x_max = torch.where(_view(improved, x), x_cur, x_max)
            grad_max = torch.where(_view(improved, x), grad, grad_max)
            loss_max = torch.where(improved, loss, loss_max)
            if i + 1 in checkpoints:
                if l1:
                    # l1-APGD: shrink k to the best point's sparsity; reset the step when it got sparser.
                    sparsity = ((x_max - x).reshape(n, -1) != 0).sum(dim=1).to(x.dtype)
                    restart = sparsity / sparsity_at_check.clamp_min(1) < 0.95
                    k_frac = sparsity / dims / 1.5
                    eta = torch.where(restart, torch.full_like(eta, threat.eps), eta / 1.5)
                    eta = eta.clamp(threat.eps / 10, threat.eps)
                    sparsity_at_check = sparsity
                else:
                    # Condition 1: too few steps raised the loss; condition 2: neither step nor best moved.
                    too_few = increases < self.rho * (i + 1 - last_check)
                    stuck = ~reduced_at_check & (loss_max <= loss_max_at_check)
                    restart = too_few | stuck
                    eta = torch.where(restart, eta / 2, eta)
                    reduced_at_check, loss_max_at_check = restart, loss_max
                # Restart from the best point, with its gradient; the next step's momentum is the jump from the
                # last iterate to it (x_prev stays), as in the reference implementation (resetting it to zero
                # measured 0.6 points weaker on APGD-T).
                x_cur = torch.where(_view(restart, x), x_max, x_cur)
                grad = torch.where(_view(restart, x), grad_max, grad)
                loss_prev = torch.where(restart, loss_max, loss_prev)
                increases = torch.zeros_like(increases)
                last_check = i + 1
            elif i & (i + 1) != 0:
                continue  # fooled samples leave at checkpoints and at steps 1, 2, 4, 8, ...
            done = best.found if rows is None else best.found[rows]
            fooled = int(done.sum())  # a host sync
            if fooled == done.numel():
                return
            if fooled < LEAVE_FRACTION * done.numel() or i + 1 == self.steps:
                continue
            keep = (~done).nonzero().squeeze(1)
            rows = keep if rows is None else rows[keep]
            x, y, x_cur, x_prev, x_max, grad, grad_max = (
                t[keep] for t in (x, y, x_cur, x_prev, x_max, grad, grad_max)
            )
            eta, loss_prev, loss_max, increases, loss_max_at_check = (
                t[keep] for t in (eta, loss_prev, loss_max, increases, loss_max_at_check)
            )
            reduced_at_check, k_frac, sparsity_at_check = (
                t[keep] for t in (reduced_at_check, k_frac, sparsity_at_check)
            )
            if goal is not None:
                goal = goal[keep]
            success_targets = goal if hit_goal else None
            n = x.shape[0]


def momentum_step(
    threat: ThreatModel, x: Tensor, x_cur: Tensor, x_prev: Tensor, step: Tensor, eta: Tensor, a: float
) -> Tensor:
    """APGD's update: z = P(x_cur + eta step), then P(x_cur + a (z - x_cur) + (1 - a)(x_cur - x_prev)).

    Built in ``step``'s buffer (which it overwrites: the caller's own direction) by the same operations in the
    same order as that formula computed out of place, so the same values, without an image-sized tensor per
    operation. Shape: x, x_cur, x_prev, step (N, ...), eta (N,) -> (N, ...).
    """
    z = threat.project_inner_(step.mul_(_view(eta, x)).add_(x_cur), x)
    momentum = torch.sub(x_cur, x_prev).mul_(1 - a)
    return threat.project_inner_(z.sub_(x_cur).mul_(a).add_(x_cur).add_(momentum), x)


def _sparse_direction(grad: Tensor, x_cur: Tensor, k_frac: Tensor, threat: ThreatModel) -> Tensor:
    """Sign of the gradient on each sample's top-k coordinates, scaled to unit l1 norm (l1-APGD).

    Coordinates at a box boundary whose gradient points outwards cannot move and are left out.
    Shape: grad, x_cur (N, ...), k_frac (N,) fraction of coordinates -> (N, ...).
    """
    low, high = threat.bounds
    blocked = ((x_cur <= low) & (grad < 0)) | ((x_cur >= high) & (grad > 0))
    flat = torch.where(blocked, torch.zeros_like(grad), grad).reshape(grad.shape[0], -1)
    magnitude = flat.abs()
    dims = flat.shape[1]
    k = (k_frac * dims).round().clamp(1, dims).long()
    threshold = magnitude.sort(dim=1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
    chosen = (magnitude >= threshold) & (magnitude > 0)
    signs = flat.sign() * chosen
    count = chosen.sum(dim=1, keepdim=True).clamp_min(1)
    return (signs / count).reshape(grad.shape)
