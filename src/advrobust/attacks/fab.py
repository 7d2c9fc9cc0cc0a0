"""FAB: the fast adaptive boundary attack, a minimum-norm attack that projects onto linearised boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, register_attack
from advrobust.attacks.deepfool import dual_norm, logit_gaps, other_classes
from advrobust.attacks.losses import is_adversarial
from advrobust.contract import eval_mode
from advrobust.errors import ConfigError
from advrobust.threat import Norm, norm_of


def project_hyperplane_box(
    point: Tensor, w: Tensor, b: Tensor, norm: Norm, bounds: tuple[float, float]
) -> Tensor:
    """The smallest step ``d`` (linf or l2) with ``<w, point + d> = b`` and ``point + d`` inside the box.

    Exact and loop-free per coordinate: each coordinate moves towards the plane by ``min(t, room)`` (linf)
    or ``|w_i| min(t, room / |w_i|)`` (l2, from the KKT conditions). The progress towards the plane is
    piecewise linear, increasing and concave in ``t``, so Newton's method from ``t = 0`` climbs it without
    overshooting and lands exactly on the crossing after passing a few breakpoints (no sort of the
    coordinates); rows it has not settled in ``newton_steps`` go through one sort and two cumulative sums.
    When the plane misses the box, the step goes to the box corner that gets closest to it.
    Shape: point, w (B, D), b (B,) -> d (B, D).
    """
    low, high = bounds
    gap = b - (w * point).sum(dim=1)
    # Out of place: gap (and so direction and room) can be wider than w and point (half-precision images
    # with float32 logits), and an in-place product would keep the narrower type.
    direction = w.sign() * gap.sign().unsqueeze(1)
    room = torch.where(direction > 0, high - point, point - low) * direction.abs()
    # linf: scale 1, so weight |w| and limit room where w != 0 (multiplying or dividing by 1 is exact).
    magnitude = w.abs()
    scale = None if norm == "linf" else magnitude
    weight = magnitude if scale is None else magnitude * scale
    live = weight > 0
    limit = torch.where(live, room if scale is None else room / torch.where(live, scale, 1.0), 0.0)
    need = gap.abs().unsqueeze(1)
    reachable = (weight * limit).sum(dim=1, keepdim=True)
    t = torch.zeros_like(need)
    tol = torch.finfo(need.dtype).eps * 64
    # Out of reach (or already on the plane): every coordinate goes to its limit.
    settled = reachable <= need
    for _ in range(_NEWTON_STEPS):
        short = need - torch.minimum(limit, t).mul_(weight).sum(dim=1, keepdim=True)
        slope = (weight * (limit > t)).sum(dim=1, keepdim=True)
        settled = settled | (short <= tol * need) | (slope <= 0)
        if bool(settled.all()):
            break
        step = torch.where(settled, torch.zeros_like(t), short / slope.clamp_min(1e-30))
        settled = settled | (t + step <= t)  # no progress left at this precision
        t = t + step
    else:
        rest = (~settled).squeeze(1).nonzero().squeeze(1)
        if rest.numel() > 0:
            t[rest] = _crossing_by_sort(limit[rest], weight[rest], need[rest])
    t = torch.where(reachable <= need, torch.full_like(t, float("inf")), t)
    if scale is not None:
        direction.mul_(scale)
    return direction.mul_(torch.minimum(t, limit))


#: Newton steps before the sort fallback (the shortfall counted as on the plane: 64 ulps of it).
_NEWTON_STEPS = 32


def _crossing_by_sort(limit: Tensor, weight: Tensor, need: Tensor) -> Tensor:
    """The ``t`` where ``sum_i weight_i min(t, limit_i)`` reaches ``need``. Shape: (R, D), (R, D), (R, 1) -> (R, 1)."""
    order = limit.argsort(dim=1)
    limit_sorted, weight_sorted = limit.gather(1, order), weight.gather(1, order)
    filled = (weight_sorted * limit_sorted).cumsum(dim=1) - weight_sorted * limit_sorted
    tail = weight_sorted.flip(1).cumsum(dim=1).flip(1)
    reach = filled + limit_sorted * tail  # progress when t equals each breakpoint
    first = (reach < need).sum(dim=1, keepdim=True)
    at = first.clamp(max=limit.shape[1] - 1)
    return ((need - filled.gather(1, at)) / tail.gather(1, at).clamp_min(1e-30)).clamp_min(0)


Rival = Literal["strongest", "label"]
RIVALS: tuple[str, ...] = get_args(Rival)


def _target_gap(
    model: nn.Module, x: Tensor, goal: Tensor, label: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gap ``z_goal - max_{j != goal} z_j`` (or ``z_goal - z_label`` given ``label``), its input gradient,
    and the logits.

    Shape: -> (N, 1), (N, 1, C, H, W), (N, K).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        rival = (
            label
            if label is not None
            else logits.detach().scatter(1, goal.unsqueeze(1), float("-inf")).argmax(dim=1)
        )
        gap = logits.gather(1, goal.unsqueeze(1)) - logits.gather(1, rival.unsqueeze(1))
        (grad,) = torch.autograd.grad(gap.sum(), x)
    return gap.detach(), grad.unsqueeze(1), logits.detach()


def _expand(per_sample: Tensor, like: Tensor) -> Tensor:
    return per_sample.reshape(-1, *([1] * (like.dim() - 1)))


@register_attack("fab")
@dataclass(frozen=True, kw_only=True)
class FAB(Attack):
    """Fast adaptive boundary attack (Croce & Hein, 2020, arXiv:1907.02044), linf and l2; FAB-T if targeted.

    Each step linearises the nearest boundary (untargeted: over all classes; FAB-T: the target against
    ``rival``, its strongest other class or, with ``"label"``, the true class as in AutoAttack's code; the two
    agree while the iterate is classified correctly), projects both the iterate and the original input onto
    it within the box, and mixes the
    two steps (weight capped by ``alpha_max``, extrapolated by ``eta``); once fooled, the iterate moves back
    towards the input by ``beta``. Restart 0 starts at the input, later ones at a random point at distance
    ``min(best, eps) / 2``. FAB-T without ``targets`` runs once per runner-up class (the ``n_target_classes``
    highest logits, as in AutoAttack) and succeeds on any misclassification; with ``targets`` it must hit
    them (whatever ``targeted`` says). Each sample keeps its smallest successful perturbation. The
    projection is exact (``project_hyperplane_box``); l1 is not implemented. Cost per step: one backward
    per class (untargeted) or one (FAB-T, per target class).
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    steps: int = 100
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    targeted: bool = False
    n_target_classes: int = 9
    rival: Rival = "strongest"

    def __post_init__(self) -> None:
        if self.threat.norm == "l1":
            raise ConfigError("FAB here supports norm 'linf' and 'l2', not 'l1': use PGD or APGD for l1")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if self.rival not in RIVALS:
            raise ConfigError(f"rival must be one of {', '.join(RIVALS)}, got {self.rival!r}")
        if self.n_target_classes < 1:
            raise ConfigError(f"n_target_classes must be >= 1, got {self.n_target_classes}")
        if not 0 <= self.alpha_max <= 1:
            raise ConfigError(f"alpha_max must lie in [0, 1], got {self.alpha_max}")
        if not (self.eta >= 1 and 0 < self.beta < 1):
            raise ConfigError(f"need eta >= 1 and 0 < beta < 1, got eta={self.eta}, beta={self.beta}")

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        # With a budget, a sample found within eps is done: later targets and restarts skip it (as
        # AutoAttack's FAB-T does), which changes no fixed-eps result and saves most of the cost. x detached:
        # the runs write into their own buffers, cloned from x, and none may carry a graph.
        return self._min_norm(model, x.detach(), y, targets, generator, done_within=self.threat.eps)[0]

    def run_min_norm(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        targets: Tensor | None = None,
        generator: torch.Generator | None = None,
        check: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Minimal adversarial points (in bounds, not projected onto the eps-ball) and their distances.

        Distances are in the threat's norm, 0 for samples already adversarial, ``inf`` where FAB failed
        (those samples come back unchanged). Shape: -> x_adv like x, distances (N,) float64.
        """
        x = x.detach()
        if check:
            self._check(model, x, y, targets)
        with eval_mode(model):
            return self._min_norm(model, x, y, targets, generator)

    def _min_norm(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
        done_within: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            logits = model(x)
        found = is_adversarial(logits, y, targets)
        x_adv = x.clone()
        distance = torch.where(
            found,
            torch.zeros(x.shape[0], dtype=torch.float64, device=x.device),
            torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device),
        )
        idx = (~found).nonzero().squeeze(1)
        if idx.numel() == 0:
            return x_adv, distance
        x0, y0, logits = x[idx], y[idx], logits[idx]
        goals: list[Tensor | None]
        if targets is not None:
            goals = [targets[idx]]
        elif self.targeted:
            count = min(self.n_target_classes, logits.shape[1] - 1)
            ranked = logits.scatter(1, y0.unsqueeze(1), float("-inf")).topk(count, dim=1).indices
            goals = list(ranked.unbind(dim=1))
        else:
            goals = [None]
        aims = None if targets is None else targets[idx]
        rivals = other_classes(y0, logits.shape[1])
        best, best_distance = x0.clone(), distance[idx]
        for goal in goals:
            for restart in range(self.restarts):
                # Only the samples not yet fooled within ``done_within`` (all of them without a budget).
                todo = (
                    torch.arange(x0.shape[0], device=x0.device)
                    if done_within is None
                    else (best_distance > done_within).nonzero().squeeze(1)
                )
                if todo.numel() == 0:
                    break
                base, dist = x0[todo], best_distance[todo]
                start = base if restart == 0 else self._random_start(base, dist, generator)
                point, size = self._descend(
                    model,
                    base,
                    y0[todo],
                    None if goal is None else goal[todo],
                    None if aims is None else aims[todo],
                    start,
                    rivals[todo],
                )
                better = size < dist
                best[todo] = torch.where(_expand(better, point), point, best[todo])
                best_distance[todo] = torch.where(better, size, dist)
        x_adv[idx] = best
        distance[idx] = best_distance
        return x_adv, distance

    def _random_start(self, x0: Tensor, best_distance: Tensor, generator: torch.Generator | None) -> Tensor:
        radius = best_distance.clamp(max=self.threat.eps).to(x0.dtype) / 2
        if self.threat.norm == "linf":
            noise = 2 * torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) - 1
        else:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        noise = noise / _expand(norm_of(noise, self.threat.norm).clamp_min(1e-12), noise)
        return self.threat.clamp(x0 + _expand(radius, noise) * noise)

    def _descend(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor,
        goal: Tensor | None,
        targets: Tensor | None,
        start: Tensor,
        rivals: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """One FAB run from ``start``: the smallest fooling point seen and its distance (inf if none).

        Untargeted (``goal`` None) it linearises the gaps from ``y`` to every class in ``rivals``.
        """
        threat = self.threat
        n = x0.shape[0]
        rows = torch.arange(n, device=x0.device)
        best = x0.clone()
        best_distance = torch.full((n,), float("inf"), dtype=torch.float64, device=x0.device)
        flat0 = x0.flatten(1)
        against_label = self.rival == "label"

        def linearise(points: Tensor, subset: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
            labels, others, aim = y, rivals, goal
            if subset is not None:
                labels, others = y[subset], rivals[subset]
                aim = None if goal is None else goal[subset]
            if aim is None:
                return logit_gaps(model, points, labels, others)
            return _target_gap(model, points, aim, labels if against_label else None)

        # FAB-T (one gradient per linearisation): while few samples are fooled per step, the forward that
        # linearises the boundary at the new iterate also says whether it fools the model, and only the
        # samples fooled (and moved back towards x0) get a second forward + backward. Otherwise, and always
        # untargeted (one backward per class), a separate check forward as in the paper's code is cheaper.
        merged = goal is not None
        x1 = start.clone()
        gaps, grads, _ = linearise(x1, None)
        for step in range(self.steps):
            nearest = (gaps.abs() / (dual_norm(grads, threat.norm) + 1e-12)).argmin(dim=1)
            w = grads[rows, nearest].flatten(1)
            b = (w * x1.flatten(1)).sum(dim=1) - gaps[rows, nearest]
            moves = project_hyperplane_box(
                torch.cat((x1.flatten(1), flat0)),
                torch.cat((w, w)),
                torch.cat((b, b)),
                threat.norm,
                threat.bounds,
            )
            d1, d2 = moves[:n].reshape(x0.shape), moves[n:].reshape(x0.shape)
            a1 = norm_of(d1, threat.norm).clamp_min(1e-8)
            a2 = norm_of(d2, threat.norm).clamp_min(1e-8)
            alpha = _expand((a1 / (a1 + a2)).clamp(0, self.alpha_max), x0)
            # (x1 + eta d1)(1 - alpha) + (x0 + eta d2) alpha, clamped: the same operations in the same order,
            # written into the projection's own buffer (x1 becomes a view of it).
            towards_x1 = d1.mul_(self.eta).add_(x1).mul_(1 - alpha)
            x1 = towards_x1.add_(d2.mul_(self.eta).add_(x0).mul_(alpha)).clamp_(*threat.bounds)
            last = step == self.steps - 1
            if merged and not last:
                gaps, grads, logits = linearise(x1, None)
            else:
                with torch.no_grad():
                    logits = model(x1)
            fooled = is_adversarial(logits, y, targets)
            size = threat.distance(x1, x0)
            better = fooled & (size < best_distance)
            torch.where(_expand(better, best), x1, best, out=best)  # best: this run's own buffer
            best_distance = torch.where(better, size, best_distance)
            if last:
                break
            was_merged = merged
            if goal is not None:
                merged = float(fooled.float().mean()) < 0.25
            if not was_merged:
                x1 = torch.where(_expand(fooled, x1), x0 + self.beta * (x1 - x0), x1)
                gaps, grads, _ = linearise(x1, None)
                continue
            moved = fooled.nonzero().squeeze(1)
            if moved.numel() == 0:
                continue
            x1 = x1.clone()
            x1[moved] = x0[moved] + self.beta * (x1[moved] - x0[moved])
            gaps_moved, grads_moved, _ = linearise(x1[moved], moved)
            gaps, grads = gaps.clone(), grads.clone()
            gaps[moved], grads[moved] = gaps_moved, grads_moved
        return best, best_distance
