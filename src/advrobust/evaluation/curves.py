"""Robustness curves: accuracy at every eps at once, from per-sample minimal adversarial distances."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.attacks.adaptive import BPDAModel, adapt, is_differentiable, is_randomized
from advrobust.attacks.base import Attack, create_attack
from advrobust.contract import check_model_io, eval_mode
from advrobust.errors import ConfigError
from advrobust.evaluation.evaluate import batch_seed
from advrobust.evaluation.stats import wilson_interval
from advrobust.threat import Norm, ThreatModel


@dataclass(frozen=True)
class RobustnessCurve:
    """Robust accuracy as a function of eps, with per-sample minimal distances behind it.

    ``distances[i]`` is the smallest perturbation (in ``norm``) found to fool sample i: 0 when it is
    misclassified clean, ``inf`` when no attack fooled it within ``eps_max``. Every point of ``accuracy`` is
    the fraction of samples whose distance exceeds that eps: an upper bound on the true robust accuracy.
    """

    norm: str
    eps: list[float]
    accuracy: list[float]
    ci_low: list[float]
    ci_high: list[float]
    distances: list[float]
    sources: list[str]
    n: int

    def accuracy_at(self, eps: float) -> float:
        """Robust accuracy at any eps (from the per-sample distances)."""
        return sum(1 for d in self.distances if d > eps) / self.n

    def with_fixed_eps(self, eps: float, fooled: Sequence[bool], source: str) -> RobustnessCurve:
        """The curve with a fixed-eps evaluation of the same samples folded in: a sample ``fooled`` at
        ``eps`` is at most ``eps`` away. Points at and above ``eps`` can only go down."""
        if len(fooled) != self.n:
            raise ConfigError(f"{len(fooled)} samples evaluated at eps {eps:g}, the curve has {self.n}")
        distances = [min(d, eps) if hit else d for d, hit in zip(self.distances, fooled, strict=True)]
        sources = self.sources if source in self.sources else [*self.sources, source]
        return _curve(self.norm, self.eps, distances, sources)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "advrobust.curve/1",
            "norm": self.norm,
            "n": self.n,
            "eps": self.eps,
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "sources": self.sources,
            "distances": [d if math.isfinite(d) else None for d in self.distances],
        }


def _min_norm_attacks(threat: ThreatModel) -> list[Attack]:
    """Minimum-norm attacks for the norm: FAB (linf, l2), DeepFool (linf, l2) and CW (l2)."""
    names = {"linf": ["fab", "deepfool"], "l2": ["fab", "deepfool", "cw"], "l1": []}[threat.norm]
    return [create_attack(name, threat=threat) for name in names]


def robustness_curve(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: Norm = "linf",
    eps_max: float = 0.3,
    points: int = 13,
    attacks: Sequence[Attack] | None = None,
    fixed_eps_attack: str | None = "apgd",
    batch_size: int = 256,
    seed: int = 0,
) -> RobustnessCurve:
    """Accuracy vs eps in [0, eps_max] from minimum-norm attacks plus a fixed-eps attack on an eps grid.

    Minimum-norm attacks (``run_min_norm``) give each sample a distance directly; the fixed-eps attack
    (default APGD-CE) runs at each of ``points - 1`` grid values on the samples not yet broken below it, and
    a sample it breaks gets that grid value as its distance (resolution: the grid). The curve is the
    per-sample minimum over all of them. Attacks follow what the model declares: through BPDA when it is not
    differentiable; when it is randomized the fixed-eps attack uses EOT and the default minimum-norm attacks
    are left out (a random model has no fixed minimal distance to find).
    Shape: x (N, C, H, W) in [0, 1], y (N,) int64.
    """
    if points < 2:
        raise ConfigError(f"points must be >= 2, got {points}")
    threat = ThreatModel(norm=norm, eps=eps_max)
    logits = check_model_io(model, x, y, threat.bounds)
    n = x.shape[0]
    distances = torch.full((n,), math.inf, dtype=torch.float64)
    distances[logits.argmax(dim=1).cpu() != y.cpu()] = 0.0
    sources: list[str] = []
    masked = not is_differentiable(model)
    if attacks is not None:
        min_norm = list(attacks)
    else:
        min_norm = [] if is_randomized(model) else _min_norm_attacks(threat)
    if not min_norm and fixed_eps_attack is None:
        raise ConfigError("no attack draws this curve: pass minimum-norm attacks or a fixed_eps_attack")
    gradient_model = BPDAModel(model) if masked else model
    with eval_mode(model):
        for k, attack in enumerate(min_norm):
            run_min_norm = getattr(attack, "run_min_norm", None)
            if run_min_norm is None:
                raise ConfigError(f"{attack.name} is not a minimum-norm attack: pass FAB, DeepFool or CW")
            sources.append(f"bpda({attack.name})" if masked else attack.name)
            for start in range(0, n, batch_size):
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]
                gen = torch.Generator(device=x.device).manual_seed(
                    batch_seed(seed, start // batch_size, 100 + k)
                )
                x_adv, dist = run_min_norm(gradient_model, xb, yb, generator=gen)
                with torch.no_grad():
                    fooled = model(x_adv).argmax(dim=1) != yb
                dist = torch.where(fooled, dist.double(), torch.full_like(dist.double(), math.inf)).cpu()
                part = distances[start : start + batch_size]
                distances[start : start + batch_size] = torch.minimum(part, dist)
        grid = [round(eps_max * i / (points - 1), 12) for i in range(points)]
        if fixed_eps_attack is not None:
            label = f"eot({fixed_eps_attack})" if is_randomized(model) else fixed_eps_attack
            sources.append(f"bpda({label})" if masked else label)
            for g, eps in enumerate(grid[1:]):
                attack = adapt(create_attack(fixed_eps_attack, threat=threat.with_eps(eps)), model)
                todo = (distances > eps).nonzero().squeeze(1)
                for start in range(0, todo.numel(), batch_size):
                    idx = todo[start : start + batch_size]
                    xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
                    gen = torch.Generator(device=x.device).manual_seed(
                        batch_seed(seed, start // batch_size, 200 + g)
                    )
                    x_adv = attack(model, xb, yb, generator=gen, check=False)
                    with torch.no_grad():
                        fooled = (model(x_adv).argmax(dim=1) != yb).cpu()
                    broken = idx[fooled]
                    distances[broken] = torch.minimum(
                        distances[broken], torch.full_like(distances[broken], eps)
                    )
    return _curve(norm, grid, distances.tolist(), sources)


def _curve(norm: str, grid: list[float], distances: list[float], sources: list[str]) -> RobustnessCurve:
    """The curve on ``grid`` from per-sample distances, with Wilson intervals."""
    n = len(distances)
    accuracy, low, high = [], [], []
    for eps in grid:
        correct = sum(1 for d in distances if d > eps)
        lo, hi = wilson_interval(correct, n)
        accuracy.append(correct / n)
        low.append(lo)
        high.append(hi)
    return RobustnessCurve(
        norm=norm,
        eps=grid,
        accuracy=accuracy,
        ci_low=low,
        ci_high=high,
        distances=distances,
        sources=sources,
        n=n,
    )
