"""HopSkipJump: decision-based black-box attack that needs only the predicted label, counting queries."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, register_attack
from advrobust.attacks.losses import is_adversarial
from advrobust.contract import eval_mode
from advrobust.errors import ConfigError
from advrobust.threat import norm_of

# Uniform-noise draws per sample when no other image of the batch starts it (the paper draws until one works).
_NOISE_TRIES = 100
# Halvings of the geometric step-size search before a step is given up (the paper halves until it works).
_MAX_HALVINGS = 20
# Probe tensors of the gradient estimate are built for this many input values at most (memory, not queries).
_PROBE_ELEMENTS = 1 << 24
# Points per forward pass (memory, not queries; a remote model batches its requests itself).
_CHUNK = 4096


def _expand(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


@register_attack("hopskipjump")
@dataclass(frozen=True, kw_only=True)
class HopSkipJump(Attack):
    """HopSkipJump (Chen, Jordan & Wainwright, 2020, arXiv:1904.02144), linf and l2, decision-based.

    Uses only the predicted label (``argmax`` of the outputs), never a score or a gradient. Starts from the
    nearest image of the batch that the model already puts in another class (the target class when
    targeted), else from uniform noise, and binary-searches towards x. Then, per iteration t: a gradient
    direction at the boundary from ``min(init_evals * sqrt(t), max_evals)`` random probes, a geometric
    step-size search from ``dist / sqrt(t)``, and a binary search back to the boundary (threshold
    ``gamma / d^(3/2)`` for l2, ``gamma / d^2`` for linf, as in the paper). Each forward of a sample counts
    one query, the clean one included, and no sample gets more than ``queries``. A minimum-norm attack
    stopped early: a sample stops once it has an adversarial point within eps.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    gradient_free: ClassVar[bool] = True
    labels_only: ClassVar[bool] = True
    queries: int = 1000
    init_evals: int = 100
    max_evals: int = 10_000
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.threat.norm == "l1":
            raise ConfigError("HopSkipJump supports norm 'linf' and 'l2', not 'l1': use PGD or APGD for l1")
        if self.queries < 1:
            raise ConfigError(f"queries must be >= 1, got {self.queries}")
        if self.init_evals < 1 or self.max_evals < self.init_evals:
            raise ConfigError(
                f"need 1 <= init_evals <= max_evals, got {self.init_evals} and {self.max_evals}"
            )
        if self.gamma <= 0:
            raise ConfigError(f"gamma must be > 0, got {self.gamma}")

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        return _Search(self, model, x, y, targets, generator).run()[0]

    def run_with_queries(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        targets: Tensor | None = None,
        generator: torch.Generator | None = None,
        check: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """The attack call that also returns how many queries each sample used. Shape: -> x_adv, (N,) int64.

        ``check`` makes the contract checks' own forward pass, which is not counted.
        """
        x = x.detach()
        if check:
            self._check(model, x, y, targets)
        with eval_mode(model):
            x_adv, used = _Search(self, model, x, y, targets, generator).run()
        return self.threat.project(x_adv, x), used


class _Search:
    """One run of the attack: per-sample state, advanced in lockstep; every query goes through ``_decide``."""

    def __init__(
        self,
        attack: HopSkipJump,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> None:
        self.attack, self.model, self.x, self.y, self.targets = attack, model, x, y, targets
        self.generator = generator
        self.threat = attack.threat
        self.norm = attack.threat.norm
        n = x.shape[0]
        self.d = x[0].numel()
        self.theta = attack.gamma / (self.d**1.5 if self.norm == "l2" else self.d**2)
        self.used = torch.zeros(n, dtype=torch.long, device=x.device)
        self.boundary = x.clone()  # the current adversarial point near the boundary, per sample
        self.dist = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        self.best = x.clone()
        self.best_dist = self.dist.clone()
        self.found = torch.zeros(n, dtype=torch.bool, device=x.device)

    # Queries.
    def _left(self) -> Tensor:
        return self.attack.queries - self.used

    def _decide(self, points: Tensor, rows: Tensor) -> Tensor:
        """Adversarial or not, one counted query per point; ``rows`` (M,) names each point's sample."""
        self.used.index_add_(0, rows, torch.ones_like(rows))
        out = []
        for start in range(0, points.shape[0], _CHUNK):
            logits = self.model(points[start : start + _CHUNK])
            part = rows[start : start + _CHUNK]
            aims = None if self.targets is None else self.targets[part]
            out.append(is_adversarial(logits, self.y[part], aims))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=points.device)

    # Geometry.
    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        return norm_of(a - b, self.norm)

    def _between(self, x: Tensor, p: Tensor, alpha: Tensor) -> Tensor:
        """The point at fraction ``alpha`` (N,) of the way from x to p: the segment (l2) or a shrunk box (linf)."""
        if self.norm == "l2":
            return x + _expand(alpha, x) * (p - x)
        radius = _expand(alpha * self._distance(p, x), x)
        return x + torch.maximum(torch.minimum(p - x, radius), -radius)

    @torch.no_grad()
    def run(self) -> tuple[Tensor, Tensor]:
        every = torch.arange(self.x.shape[0], device=self.x.device)
        logits = self.model(self.x)
        self.used += 1
        fooled = is_adversarial(logits, self.y, self.targets)
        # Already adversarial at x: distance 0, nothing to search.
        self.best_dist = torch.where(fooled, torch.zeros_like(self.dist), self.best_dist)
        if self.threat.eps == 0 or self.attack.queries < 2:
            return self.best, self.used
        self._start(logits.argmax(dim=1), ~fooled)
        self.found &= ~fooled
        if bool(self.found.any()):
            self._binary_search(every[self.found])
        iteration = 0
        while True:
            rows = every[self._active()]
            if rows.numel() == 0:
                break
            iteration += 1
            direction = self._gradient_direction(rows, iteration)
            self._step(rows, direction, iteration)
        return self.best, self.used

    # Phases.
    def _active(self) -> Tensor:
        done = self.best_dist <= self.threat.eps + 1e-12
        return self.found & ~done & (self._left() > 0)

    def _start(self, predicted: Tensor, need: Tensor) -> None:
        """Pick each sample's starting adversarial point: another image of the batch, else uniform noise."""
        x = self.x
        flat = x.reshape(x.shape[0], -1)
        if self.targets is None:
            good = predicted.unsqueeze(0) != self.y.unsqueeze(1)
        else:
            good = predicted.unsqueeze(0) == self.targets.unsqueeze(1)
        distances = torch.cdist(
            flat.unsqueeze(0), flat.unsqueeze(0), p=2.0 if self.norm == "l2" else math.inf
        )[0]
        distances = distances.masked_fill(~good, math.inf)
        nearest = distances.argmin(dim=1)
        has = need & torch.isfinite(distances.gather(1, nearest.unsqueeze(1)).squeeze(1))
        # The other image is known adversarial from its own clean query: no query spent here.
        self.boundary = torch.where(_expand(has, x), x[nearest], self.boundary)
        self.found |= has
        low, high = self.threat.bounds
        for _ in range(_NOISE_TRIES):
            rows = (need & ~self.found & (self._left() > 0)).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            noise = torch.rand(x[rows].shape, generator=self.generator, device=x.device, dtype=x.dtype)
            noise = low + (high - low) * noise
            ok = self._decide(noise, rows)
            self.boundary[rows[ok]] = noise[ok]
            self.found[rows[ok]] = True
        self.dist = torch.where(self.found, self._distance(self.boundary, x), self.dist)

    def _binary_search(self, rows: Tensor) -> None:
        """Move each sample's boundary point (adversarial) along the way to x until within the threshold."""
        x, far = self.x[rows], self.boundary[rows]
        low = torch.zeros(rows.numel(), dtype=x.dtype, device=x.device)
        high = torch.ones_like(low)
        dist = self._distance(far, x)
        threshold = self.theta if self.norm == "l2" else torch.clamp(self.theta / dist, max=self.theta)
        threshold = torch.as_tensor(threshold, dtype=x.dtype, device=x.device).expand_as(low)
        while True:
            pending = ((high - low) > threshold) & (self._left()[rows] > 0)
            idx = pending.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            mid = (high[idx] + low[idx]) / 2
            ok = self._decide(self._between(x[idx], far[idx], mid), rows[idx])
            high[idx] = torch.where(ok, mid, high[idx])
            low[idx] = torch.where(ok, low[idx], mid)
        # ``high`` always marks an adversarial point: it starts at the known one and moves only on success.
        point = self._between(x, far, high)
        self.boundary[rows] = point
        self.dist[rows] = self._distance(point, x)
        better = self.dist[rows] < self.best_dist[rows]
        self.best[rows[better]] = point[better]
        self.best_dist[rows[better]] = self.dist[rows][better]

    def _gradient_direction(self, rows: Tensor, iteration: int) -> Tensor:
        """The paper's Monte-Carlo estimate of the boundary's normal at each boundary point (eq. 9, with
        the baseline of eq. 16): unit l2 for l2, its sign for linf. Shape: rows (M,) -> (M, C, H, W).
        """
        x = self.x
        probes_per_sample = min(int(self.attack.init_evals * math.sqrt(iteration)), self.attack.max_evals)
        counts = self._left()[rows].clamp(max=probes_per_sample)
        low, high = self.threat.bounds
        if iteration == 1:
            delta = torch.full((rows.numel(),), 0.1 * (high - low), dtype=x.dtype, device=x.device)
        else:
            scale = math.sqrt(self.d) if self.norm == "l2" else self.d
            delta = scale * self.theta * self.dist[rows]
        direction = torch.zeros_like(x[rows])
        group = max(1, _PROBE_ELEMENTS // (probes_per_sample * self.d))
        slots = torch.arange(probes_per_sample, device=x.device)
        for start in range(0, rows.numel(), group):
            part = slice(start, start + group)
            base, count, radius = self.boundary[rows[part]], counts[part], delta[part].reshape(-1, 1, 1, 1, 1)
            shape = (base.shape[0], probes_per_sample, *x.shape[1:])
            if self.norm == "l2":
                noise = torch.randn(shape, generator=self.generator, device=x.device, dtype=x.dtype)
            else:
                noise = torch.rand(shape, generator=self.generator, device=x.device, dtype=x.dtype) * 2 - 1
            noise = noise / noise.flatten(2).norm(dim=2).clamp_min(1e-12).reshape(*shape[:2], 1, 1, 1)
            probes = (base.unsqueeze(1) + radius * noise).clamp(low, high)
            noise = (probes - base.unsqueeze(1)) / radius
            used = slots.unsqueeze(0) < count.unsqueeze(1)
            owners = rows[part].unsqueeze(1).expand_as(used)[used]
            signs = torch.zeros(used.shape, dtype=x.dtype, device=x.device)
            signs[used] = self._decide(probes[used], owners).to(x.dtype) * 2 - 1
            total = signs.sum(dim=1, keepdim=True)
            mean = total / count.unsqueeze(1)
            # All probes on one side: the baseline would zero the estimate, so average the raw signs.
            one_sided = total.abs() == count.unsqueeze(1)
            weights = torch.where(one_sided, signs, (signs - mean) * used)
            estimate = (weights.reshape(*shape[:2], 1, 1, 1) * noise).sum(dim=1) / _expand(count, base)
            direction[part] = estimate
        if self.norm == "linf":
            return direction.sign()
        return direction / _expand(norm_of(direction, "l2").clamp_min(1e-12), direction)

    def _step(self, rows: Tensor, direction: Tensor, iteration: int) -> None:
        """Geometric step-size search from dist / sqrt(t) along ``direction``, then back to the boundary."""
        size = self.dist[rows] / math.sqrt(iteration)
        moved = torch.zeros(rows.numel(), dtype=torch.bool, device=rows.device)
        for _ in range(_MAX_HALVINGS):
            idx = (~moved & (self._left()[rows] > 0)).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            candidate = self.threat.clamp(
                self.boundary[rows[idx]] + _expand(size[idx], direction) * direction[idx]
            )
            ok = self._decide(candidate, rows[idx])
            self.boundary[rows[idx[ok]]] = candidate[ok]
            moved[idx[ok]] = True
            size[idx] = torch.where(ok, size[idx], size[idx] / 2)
        if bool(moved.any()):
            self._binary_search(rows[moved])
