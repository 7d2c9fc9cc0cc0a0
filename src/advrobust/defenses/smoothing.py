"""Randomized smoothing (Cohen, Rosenfeld & Kolter, 2019, arXiv:1902.02918): a classifier with certified
l2 radii, and the noise-augmented training objective that makes a base model work under noise.

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, is estimated by Monte
Carlo: ``predict`` abstains (-1) unless a binomial test separates the top two classes at level ``alpha``;
``certify`` returns the class and the radius ``sigma * Phi^-1(pA_lower)`` with ``pA_lower`` the one-sided
Clopper-Pearson bound. The noisy inputs are not clipped to [0, 1], as in the paper.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.contract import eval_mode
from advrobust.defenses.transforms import random_normal
from advrobust.errors import ConfigError
from advrobust.training import register_objective

_TINY = 1e-300


def _beta_fraction(a: Tensor, b: Tensor, x: Tensor, max_terms: int = 10_000) -> Tensor:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4).

    Converges fast for x < (a + 1) / (a + b + 2), in O(sqrt(max(a, b))) terms. Shape: broadcast of inputs.
    """
    qab, qap, qam = a + b, a + 1, a - 1
    c = torch.ones_like(x)
    d = 1 - qab * x / qap
    d = 1 / torch.where(d.abs() < _TINY, torch.full_like(d, _TINY), d)
    h = d
    for m in range(1, max_terms + 1):
        for numerator in (
            m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
            -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m)),
        ):
            d = 1 + numerator * d
            d = 1 / torch.where(d.abs() < _TINY, torch.full_like(d, _TINY), d)
            c = 1 + numerator / c
            c = torch.where(c.abs() < _TINY, torch.full_like(c, _TINY), c)
            delta = d * c
            h = h * delta
        # One host sync every 16 terms: this runs once per certificate, not per attack step. The factors
        # settle within a few float64 ulps of 1 (not exactly), hence 1e-13.
        if m % 16 == 0 and bool(((delta - 1).abs() < 1e-13).all()):
            break
    return h


def _broadcast(*values: Tensor | float) -> list[Tensor]:
    tensors = [torch.as_tensor(v, dtype=torch.float64) for v in values]
    zero = torch.zeros((), dtype=torch.float64)
    for t in tensors:
        zero = zero + 0 * t
    return [t.expand(zero.shape) for t in tensors]


def _log_beta(a: Tensor, b: Tensor) -> Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def betainc(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """The regularized incomplete beta function I_x(a, b), in float64. Shape: broadcast of inputs."""
    a, b, x = _broadcast(a, b, x)
    inside = (x > 0) & (x < 1)
    xs = x.clamp(1e-300, 1 - 1e-16)
    # Evaluate the fraction where it converges: I_x(a, b) = 1 - I_{1-x}(b, a) on the far side.
    swap = xs >= (a + 1) / (a + b + 2)
    aa, bb, xx = torch.where(swap, b, a), torch.where(swap, a, b), torch.where(swap, 1 - xs, xs)
    front = torch.exp(aa * torch.log(xx) + bb * torch.log1p(-xx) - _log_beta(aa, bb)) / aa
    part = front * _beta_fraction(aa, bb, xx)
    value = torch.where(swap, 1 - part, part)
    return torch.where(inside, value, torch.where(x >= 1, torch.ones_like(x), torch.zeros_like(x)))


def beta_quantile(q: Tensor | float, a: Tensor, b: Tensor, iterations: int = 200) -> Tensor:
    """The q-quantile of Beta(a, b): the x with I_x(a, b) = q, by Newton steps from the normal
    approximation, kept inside a shrinking bisection bracket (float64, to about 1e-13 relative).
    Shape: broadcast of inputs.
    """
    q_t, a_t, b_t = _broadcast(q, a, b)
    low, high = torch.zeros_like(q_t), torch.ones_like(q_t)
    mean = a_t / (a_t + b_t)
    std = torch.sqrt(a_t * b_t / ((a_t + b_t) ** 2 * (a_t + b_t + 1)))
    x = (mean + normal_quantile(q_t.clamp(1e-300, 1 - 1e-16)) * std).clamp(1e-6, 1 - 1e-6)
    x = torch.where(torch.isfinite(x), x, torch.full_like(x, 0.5))
    for _ in range(iterations):
        value = betainc(a_t, b_t, x) - q_t
        below = value < 0
        low, high = torch.where(below, x, low), torch.where(below, high, x)
        log_pdf = (a_t - 1) * torch.log(x) + (b_t - 1) * torch.log1p(-x) - _log_beta(a_t, b_t)
        newton = x - value / torch.exp(log_pdf).clamp_min(_TINY)
        bisect = (low + high) / 2
        step_ok = torch.isfinite(newton) & (newton > low) & (newton < high)
        next_x = torch.where(step_ok, newton, bisect)
        done = bool(((next_x - x).abs() <= 1e-14 * x.clamp_min(1e-300)).all())
        x = next_x
        if done:
            break
    return x


def clopper_pearson_lower(successes: Tensor, trials: int, alpha: float) -> Tensor:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion:
    the alpha-quantile of Beta(k, n - k + 1), and 0 when k = 0. Shape: (N,) -> (N,) float64.
    """
    k = successes.to(torch.float64)
    bound = beta_quantile(alpha, k.clamp_min(1), trials - k + 1)
    return torch.where(k > 0, bound, torch.zeros_like(bound))


def binomial_test_half(successes: Tensor, trials: Tensor) -> Tensor:
    """Two-sided p-value of ``successes`` out of ``trials`` under p = 1/2 (exact; as scipy's binomtest).

    Shape: (N,), (N,) -> (N,) float64.
    """
    k = successes.to(torch.float64)
    m = trials.to(torch.float64)
    upper = torch.maximum(k, m - k)
    # P(X >= j) = I_{1/2}(j, m - j + 1) for j >= 1; the distribution is symmetric, so double one tail.
    tail = betainc(upper.clamp_min(1), (m - upper + 1).clamp_min(1), torch.full_like(k, 0.5))
    tail = torch.where(upper > 0, tail, torch.ones_like(tail))
    return (2 * tail).clamp(max=1.0)


def normal_quantile(p: Tensor) -> Tensor:
    """Phi^-1, the standard normal quantile, in float64. Shape: like p."""
    out: Tensor = torch.special.ndtri(p.to(torch.float64))
    return out


class SmoothedClassifier(nn.Module):
    """The Gaussian-smoothed version of ``base`` (Cohen, Rosenfeld & Kolter, 2019, arXiv:1902.02918).

    ``forward`` is one draw of the base classifier under noise (a randomized model: evaluate it with EOT);
    ``predict`` and ``certify`` estimate the smoothed classifier itself. Noise comes from the ``generator``
    argument, else the module's ``generator``, else torch's global RNG.
    Shape: x (N, C, H, W) -> forward logits (N, K); predict (N,) int64, -1 = abstain.
    """

    randomized = True
    differentiable = True

    def __init__(
        self, base: nn.Module, *, sigma: float = 0.25, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < math.inf:
            raise ConfigError(f"sigma must be a number > 0, got {sigma!r}: the paper uses 0.12 to 1.0")
        self.base = base
        self.sigma = float(sigma)
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.base(x + self.sigma * random_normal(x.shape, x, self.generator))
        return out

    def counts(
        self, x: Tensor, n: int, *, batch_size: int = 1000, generator: torch.Generator | None = None
    ) -> Tensor:
        """How often the base classifier predicts each class over ``n`` noisy copies of each input.

        Shape: x (N, C, H, W) -> (N, K) int64, rows summing to n.
        """
        if n < 1 or batch_size < 1:
            raise ConfigError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        gen = generator if generator is not None else self.generator
        per_input = min(n, batch_size)
        inputs_per_batch = max(1, batch_size // per_input)
        counts: Tensor | None = None
        with torch.no_grad(), eval_mode(self.base):
            for start in range(0, x.shape[0], inputs_per_batch):
                chunk = x[start : start + inputs_per_batch]
                done = 0
                while done < n:
                    draws = min(per_input, n - done)
                    noisy = chunk.repeat_interleave(draws, dim=0)
                    noisy = noisy + self.sigma * random_normal(noisy.shape, noisy, gen)
                    logits = self.base(noisy)
                    if counts is None:
                        counts = torch.zeros(x.shape[0], logits.shape[1], dtype=torch.int64, device=x.device)
                    preds = logits.argmax(dim=1).view(chunk.shape[0], draws)
                    counts[start : start + chunk.shape[0]].scatter_add_(
                        1, preds, torch.ones_like(preds, dtype=torch.int64)
                    )
                    done += draws
        assert counts is not None
        return counts

    def predict(
        self,
        x: Tensor,
        *,
        n: int = 100,
        alpha: float = 0.001,
        batch_size: int = 1000,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The smoothed prediction, or -1 (abstain) when the top two classes' counts do not differ
        significantly (two-sided binomial test at level ``alpha``). PREDICT of Cohen et al.

        Shape: x (N, C, H, W) -> (N,) int64.
        """
        _check_alpha(alpha)
        counts = self.counts(x, n, batch_size=batch_size, generator=generator)
        top2 = counts.topk(2, dim=1)
        n_a, n_b = top2.values[:, 0], top2.values[:, 1]
        p_value = binomial_test_half(n_a, n_a + n_b)
        return torch.where(p_value <= alpha, top2.indices[:, 0], torch.full_like(n_a, -1))

    def certify(
        self,
        x: Tensor,
        *,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The smoothed prediction with its certified l2 radius (CERTIFY of Cohen et al.).

        ``n0`` draws pick the class, ``n`` fresh draws bound its probability from below (Clopper-Pearson at
        level ``alpha``); radius ``sigma * Phi^-1(pA_lower)``. Abstains (-1, radius 0) when the bound is not
        above 1/2. With probability at least 1 - alpha per input, no perturbation of l2 norm below the
        radius changes the smoothed classifier's prediction.
        Shape: x (N, C, H, W) -> prediction (N,) int64, radius (N,) float64.
        """
        _check_alpha(alpha)
        guess = self.counts(x, n0, batch_size=batch_size, generator=generator).argmax(dim=1)
        counts = self.counts(x, n, batch_size=batch_size, generator=generator)
        p_lower = clopper_pearson_lower(counts.gather(1, guess.unsqueeze(1)).squeeze(1), n, alpha)
        certified = p_lower > 0.5
        radius = self.sigma * normal_quantile(p_lower.clamp(0.5, 1.0))
        prediction = torch.where(certified, guess, torch.full_like(guess, -1))
        return prediction, torch.where(certified, radius, torch.zeros_like(radius))


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}: the paper uses 0.001")


def certified_accuracy(prediction: Tensor, radius: Tensor, y: Tensor, radii: Sequence[float]) -> list[float]:
    """For each radius r, the fraction of inputs certified correct at r: prediction == y and radius >= r.

    Shape: prediction (N,), radius (N,), y (N,) -> one float per radius.
    """
    correct = prediction == y
    return [float((correct & (radius >= r)).double().mean()) for r in radii]


@dataclass(frozen=True)
class Certification:
    """Certificates for a data set: per-sample predictions and radii, and certified accuracy at radii."""

    sigma: float
    n0: int
    n: int
    alpha: float
    prediction: list[int]
    radius: list[float]
    labels: list[int]
    radii: list[float]
    certified: list[float]
    seconds: float

    @property
    def accuracy(self) -> float:
        """The smoothed classifier's accuracy (abstentions count as errors): certified accuracy at 0."""
        return sum(p == y for p, y in zip(self.prediction, self.labels, strict=True)) / max(
            1, len(self.labels)
        )

    @property
    def abstained(self) -> float:
        """The fraction of abstentions."""
        return sum(p < 0 for p in self.prediction) / max(1, len(self.prediction))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "advrobust.certify/1",
            **dataclasses.asdict(self),
            "accuracy": self.accuracy,
            "abstained": self.abstained,
        }


def certify_dataset(
    smoothed: SmoothedClassifier,
    x: Tensor,
    y: Tensor,
    *,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    radii: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
    batch_size: int = 1000,
    chunk: int = 100,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Certification:
    """Certify every input of ``x`` (``chunk`` inputs at a time) and report certified accuracy at ``radii``.

    Shape: x (N, C, H, W), y (N,) int64.
    """
    start = time.perf_counter()
    predictions, radius = [], []
    for i in range(0, x.shape[0], chunk):
        pred, rad = smoothed.certify(
            x[i : i + chunk], n0=n0, n=n, alpha=alpha, batch_size=batch_size, generator=generator
        )
        predictions.append(pred)
        radius.append(rad)
        if progress is not None:
            progress(min(i + chunk, x.shape[0]), x.shape[0])
    prediction, radius_t = torch.cat(predictions), torch.cat(radius)
    return Certification(
        sigma=smoothed.sigma,
        n0=n0,
        n=n,
        alpha=alpha,
        prediction=prediction.cpu().tolist(),
        radius=radius_t.cpu().tolist(),
        labels=y.cpu().tolist(),
        radii=[float(r) for r in radii],
        certified=certified_accuracy(prediction, radius_t, y.to(prediction.device), radii),
        seconds=time.perf_counter() - start,
    )


@register_objective("gaussian-augment")
@dataclass(frozen=True, kw_only=True)
class GaussianAugment:
    """Training with Gaussian noise augmentation, ``x + N(0, sigma^2 I)`` unclipped, so that the base model
    of a smoothed classifier works under noise (Cohen et al., 2019, arXiv:1902.02918, sec. 4).

    Train with the ``sigma`` you will certify with. The train accuracy reported is under noise.
    """

    name: ClassVar[str] = "gaussian-augment"
    sigma: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not self.sigma >= 0:
            raise ConfigError(f"sigma must be a number >= 0, got {self.sigma!r}: e.g. 0.25")

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        logits = model(x + self.sigma * random_normal(x.shape, x, generator))
        return F.cross_entropy(logits.float(), y), logits

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
