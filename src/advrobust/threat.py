"""The threat model: which perturbations the attacker may make (norm, budget eps, valid input bounds)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from advrobust.errors import ConfigError

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = get_args(Norm)


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _expand(per_sample: Tensor | float, like: Tensor) -> Tensor | float:
    """Reshape a per-sample (N,) tensor so it broadcasts against ``like`` (N, ...)."""
    if isinstance(per_sample, Tensor):
        return per_sample.reshape(-1, *([1] * (like.dim() - 1)))
    return per_sample


def norm_of(delta: Tensor, norm: Norm) -> Tensor:
    """Per-sample norm of a perturbation. Shape: (N, ...) -> (N,)."""
    flat = _flat(delta)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        size: Tensor = torch.linalg.vector_norm(flat, ord=2, dim=1)
        return size
    return flat.abs().sum(dim=1)


def project_l1_ball(delta: Tensor, eps: Tensor | float) -> Tensor:
    """Euclidean projection of each sample onto the l1 ball of radius eps (Duchi et al., 2008).

    Shape: (N, ...) -> (N, ...). Vectorised over the batch with one sort.
    """
    flat = _flat(delta)
    n, d = flat.shape
    if isinstance(eps, Tensor):
        radius = eps.to(device=flat.device, dtype=flat.dtype).expand(n).reshape(n, 1)
    else:  # a fill, not a copy from the host (which waits for the GPU's queue)
        radius = torch.full((n, 1), float(eps), dtype=flat.dtype, device=flat.device)
    magnitude = flat.abs()
    inside = magnitude.sum(dim=1, keepdim=True) <= radius
    sorted_mag, _ = magnitude.sort(dim=1, descending=True)
    cumsum = sorted_mag.cumsum(dim=1) - radius
    ks = torch.arange(1, d + 1, device=flat.device, dtype=flat.dtype)
    candidate = sorted_mag - cumsum / ks > 0
    # rho: the last index where the condition holds (it holds for a prefix).
    rho = candidate.to(flat.dtype).cumsum(dim=1).argmax(dim=1, keepdim=True)
    theta = (cumsum.gather(1, rho) / (rho + 1).to(flat.dtype)).clamp_min(0)
    projected = flat.sign() * (magnitude - theta).clamp_min(0)
    return torch.where(inside, flat, projected).reshape(delta.shape)


def project_delta(delta: Tensor, norm: Norm, eps: Tensor | float) -> Tensor:
    """Project perturbations onto the eps-ball of ``norm`` (eps a float or a per-sample (N,) tensor)."""
    if norm == "linf":
        bound = _expand(eps, delta)
        if isinstance(bound, Tensor):
            return torch.maximum(torch.minimum(delta, bound), -bound)
        return delta.clamp(-bound, bound)
    if norm == "l2":
        size = norm_of(delta, "l2")
        # A float eps stays a Python scalar: a tensor made from it is a copy from the host, which on a GPU
        # waits for everything queued (twice per PGD step).
        radius = eps.to(device=delta.device, dtype=delta.dtype) if isinstance(eps, Tensor) else float(eps)
        return delta * _expand(_l2_factor(size, radius), delta)
    return project_l1_ball(delta, eps)


def _l2_factor(size: Tensor, radius: Tensor | float) -> Tensor:
    """Per-sample factors that shrink perturbations of l2 norm ``size`` into the ball. Shape: (N,)."""
    return torch.where(size > radius, radius / size.clamp_min(1e-12), 1.0)


#: Point types whose inner projections skip the float64 re-check (``ThreatModel.project(exact=False)``).
_INNER_DTYPES = (torch.float32, torch.float64)


def _aim_inside(radius: Tensor | float, dtype: torch.dtype) -> Tensor | float:
    """The radius an inner projection aims at: 16 float epsilons inside."""
    return radius * (1 - 16 * torch.finfo(dtype).eps)


def _exponentials(shape: tuple[int, ...], x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard exponential draws of ``shape`` in x's dtype and device (finite in half precision too)."""
    uniform = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
    return -uniform.clamp_min(torch.finfo(x.dtype).tiny).log()


def _unit_direction(x: Tensor, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """One direction per sample, uniform on the unit sphere of ``norm`` ("l2" or "l1"). Shape: (N, D)."""
    if norm == "l2":
        direction = _flat(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    else:
        # Laplace coordinates normalised in l1 are uniform on the l1 sphere.
        magnitude = _exponentials(tuple(x.shape), x, generator)
        signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        direction = _flat(magnitude * signs)
    size = norm_of(direction, norm).clamp_min(torch.finfo(x.dtype).tiny)
    return direction / size.unsqueeze(1)


@dataclass(frozen=True)
class ThreatModel:
    """The set of allowed adversarial inputs: ``x'`` with ``||x' - x||_norm <= eps`` inside ``bounds``.

    Shape: methods take x, x_adv of shape (N, C, H, W) and return tensors of the same shape or (N,).
    """

    norm: Norm = "linf"
    eps: float = 0.3
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}: use one of {', '.join(NORMS)}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise ConfigError(f"eps must be a finite number >= 0, got {self.eps!r}: pass e.g. eps=0.3")
        low, high = self.bounds
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(
                f"bounds must be finite with low < high, got {self.bounds!r}: use e.g. (0.0, 1.0)"
            )
        object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "bounds", (float(low), float(high)))

    def with_eps(self, eps: float) -> ThreatModel:
        """The same threat model with another budget."""
        return ThreatModel(norm=self.norm, eps=eps, bounds=self.bounds)

    def clamp(self, x: Tensor) -> Tensor:
        """Clip values into the input bounds."""
        return x.clamp(self.bounds[0], self.bounds[1])

    def project(
        self, x_adv: Tensor, x: Tensor, eps: Tensor | float | None = None, *, exact: bool = True
    ) -> Tensor:
        """The nearest-in-spirit feasible point: project onto the eps-ball around x, then clip to bounds.

        Clipping to the box only moves each coordinate towards x (which lies in the box), so it never
        increases the perturbation's norm: the result lies in both sets. ``exact=False`` (an attack's inner
        steps, whose result ``Attack.__call__`` projects exactly; a third fewer kernels per l2 step) skips the
        float64 re-check of l2 / l1 norms for float32 / float64 points and aims 16 float epsilons inside
        instead, which rounding in ``x + delta`` almost never undoes (and then by about 1e-7); half-precision
        points get the re-check either way.
        """
        radius = self.eps if eps is None else eps
        inner = not exact and self.norm != "linf" and x_adv.dtype in _INNER_DTYPES
        if inner:
            radius = _aim_inside(radius, x_adv.dtype)
        delta = project_delta(x_adv - x, self.norm, radius)
        out = self.clamp(x + delta)
        if self.norm == "linf" or inner:
            return out
        # Rounding in x + delta can push an l2/l1 norm a hair past eps; shrink those samples back inside.
        size = self.distance(out, x)
        # Aim a little inside: the rescaled point is rounded again (about 1e-6 absolute in 784 dims).
        limit: Tensor | float
        target: Tensor | float
        if isinstance(radius, Tensor):
            limit = radius.to(device=x.device, dtype=torch.float64)
            target = limit - torch.minimum(limit * 0.01, 2e-6 + limit * 1e-5)
        else:  # Python scalars: no copy from the host (see project_delta)
            limit = float(radius)
            target = limit - min(limit * 0.01, 2e-6 + limit * 1e-5)
        over = size > limit
        factor = torch.where(over, target / size.clamp_min(1e-30), 1.0)
        shrunk = self.clamp(x + (out - x) * factor.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))))
        return torch.where(over.reshape(-1, *([1] * (x.dim() - 1))), shrunk, out)

    def project_inner_(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """``project(x_adv, x, exact=False)`` written into ``x_adv`` (linf and l2, float32 / float64 points;
        other cases return a new tensor, as ``project``): the same operations in the same order, so the same
        values, without an image-sized buffer per operation. ``x_adv`` must be the caller's own buffer.
        """
        if self.norm == "l1" or x_adv.dtype not in _INNER_DTYPES:
            return self.project(x_adv, x, exact=False)
        delta = x_adv.sub_(x)
        if self.norm == "linf":
            delta.clamp_(-self.eps, self.eps)
        else:
            factor = _l2_factor(norm_of(delta, "l2"), _aim_inside(self.eps, x_adv.dtype))
            delta.mul_(_expand(factor, delta))
        return delta.add_(x).clamp_(self.bounds[0], self.bounds[1])

    def random_init(
        self, x: Tensor, generator: torch.Generator | None = None, *, clip: bool = True
    ) -> Tensor:
        """A point drawn uniformly from the eps-ball around x, then clipped to bounds unless ``clip=False``."""
        eps = self.eps
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (2 * noise - 1) * eps
        elif self.norm == "l2":
            direction = _unit_direction(x, "l2", generator)
            u = torch.rand(x.shape[0], 1, generator=generator, device=x.device, dtype=x.dtype)
            delta = (direction * eps * u.pow(1.0 / direction.shape[1])).reshape(x.shape)
        else:
            # Uniform in the l1 ball: signed exponentials divided by their sum plus one more exponential.
            flat_shape = (x.shape[0], x[0].numel() + 1)
            expo = _exponentials(flat_shape, x, generator)
            signs = torch.randint(0, 2, (x.shape[0], flat_shape[1] - 1), generator=generator, device=x.device)
            coords = expo[:, :-1] / expo.sum(dim=1, keepdim=True)
            delta = (coords * (2 * signs - 1).to(x.dtype) * eps).reshape(x.shape)
        return self.clamp(x + delta) if clip else x + delta

    def random_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """PGD's random start: linf uniform in the box (as ``random_init``); l2 / l1 a uniform direction at a
        radius drawn uniformly from [0, eps], then clipped to bounds.

        A draw uniform in a high-dimensional ball lies almost on its surface, and the projected steps only
        shrink that random component geometrically, which cost PGD-40 l2 about 0.9 points of robust accuracy
        on MNIST (benchmarks/RESULTS.md); a uniform radius also tries starts near x.
        """
        if self.norm == "linf":
            return self.random_init(x, generator)
        direction = _unit_direction(x, self.norm, generator)
        radius = self.eps * torch.rand(x.shape[0], 1, generator=generator, device=x.device, dtype=x.dtype)
        return self.clamp(x + (direction * radius).reshape(x.shape))

    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Per-sample perturbation size in this norm, computed in float64. Shape: (N,)."""
        return norm_of(x_adv.double() - x.double(), self.norm)

    def contains(self, x_adv: Tensor, x: Tensor, tol: float = 1e-6) -> Tensor:
        """Per-sample check that x_adv is within eps (+tol) of x and inside bounds (+-tol). Shape: (N,) bool."""
        within_eps = self.distance(x_adv, x) <= self.eps + tol
        flat = _flat(x_adv)
        within_bounds = (flat >= self.bounds[0] - tol).all(dim=1) & (flat <= self.bounds[1] + tol).all(dim=1)
        return within_eps & within_bounds

    def to_dict(self) -> dict[str, object]:
        return {"norm": self.norm, "eps": self.eps, "bounds": list(self.bounds)}
