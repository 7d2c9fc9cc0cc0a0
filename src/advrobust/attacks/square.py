"""Square attack: score-based black-box random search with square-shaped updates, counting queries."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, register_attack
from advrobust.attacks.losses import is_adversarial, margin
from advrobust.contract import eval_mode
from advrobust.errors import ConfigError

# The paper's schedule for the fraction p of pixels changed: halve p_init after these iterations
# (given for a 10,000-query budget and rescaled to the actual one, as in AutoAttack).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, queries: int) -> float:
    """The fraction of the image a square covers at ``iteration`` (Andriushchenko et al., 2020, sec. 3)."""
    scaled = int(iteration / queries * 10000)
    halvings = sum(scaled > step for step in _HALVINGS)
    return p_init * 0.5**halvings


def _random_square(
    n: int,
    channels: int,
    side: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """A random side x side square per sample (its top row drawn, then its left column): its rows (n, side),
    columns (n, side) and flat pixel indices for every channel (n, channels, side^2)."""
    top = torch.randint(0, height - side + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, width - side + 1, (n,), generator=generator, device=device)
    offsets = torch.arange(side, device=device)
    rows, cols = top.unsqueeze(1) + offsets, left.unsqueeze(1) + offsets
    pixels = (
        (rows.unsqueeze(2) * width + cols.unsqueeze(1)).reshape(n, 1, side * side).expand(n, channels, -1)
    )
    return rows, cols, pixels


def _signs(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1


def _rings(height: int, width: int, device: torch.device) -> Tensor:
    """Concentric rectangles weighted 1 / (k + 1)^2 around the centre, unit l2 norm. Shape: (height, width)."""
    centre_h, centre_w = height // 2, width // 2
    rings = max(centre_h, centre_w) + 1
    weight = 1.0 / torch.arange(1, rings + 1, device=device, dtype=torch.float64) ** 2
    suffix = weight.flip(0).cumsum(0).flip(0)  # pixel in ring d is covered by rings d, d + 1, ...
    dist_h = (torch.arange(height, device=device) - centre_h).abs()
    dist_w = (torch.arange(width, device=device) - centre_w).abs()
    pattern = suffix[torch.maximum(dist_h.unsqueeze(1), dist_w.unsqueeze(0))]
    unit: Tensor = pattern / pattern.norm()
    return unit


@functools.lru_cache(maxsize=64)
def square_pattern(size: int, device: torch.device) -> Tensor:
    """The l2 update of the paper: a positive and a negative pseudo-Gaussian bump side by side.

    Unit l2 norm, float64, cached per (size, device): do not modify it in place. Shape: (size, size); its
    transpose is the other orientation.
    """
    half = size // 2
    pattern = torch.zeros(size, size, device=device, dtype=torch.float64)
    if half > 0:
        pattern[:half] = _rings(half, size, device)
    pattern[half:] = -_rings(size - half, size, device)
    unit: Tensor = pattern / pattern.norm()
    return unit


def _place(
    pattern: Tensor, top: Tensor, left: Tensor, height: int, width: int, generator: torch.Generator | None
) -> Tensor:
    """Put a (size, size) pattern, randomly transposed per sample, at each sample's corner; zero elsewhere.

    Shape: -> (n, 1, H, W).
    """
    size = pattern.shape[0]
    both = torch.stack((pattern, pattern.t()))
    flip = torch.randint(0, 2, top.shape, generator=generator, device=top.device)
    rows = torch.arange(height, device=top.device) - top.unsqueeze(1)
    cols = torch.arange(width, device=top.device) - left.unsqueeze(1)
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    values = both[
        flip[:, None, None], rows.clamp(0, size - 1)[:, :, None], cols.clamp(0, size - 1)[:, None, :]
    ]
    return (values * inside).unsqueeze(1)


def _image_norm(t: Tensor) -> Tensor:
    return t.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()


@register_attack("square")
@dataclass(frozen=True, kw_only=True)
class Square(Attack):
    """Square attack (Andriushchenko et al., 2020, arXiv:1912.00049), linf and l2, score-based black-box.

    Random search on the margin of the model's logits, never a gradient (all forwards run under
    ``torch.no_grad()``). linf: vertical-stripe init, then each step resets one random square (per sample)
    to +-eps per channel; l2: the paper's grid of pseudo-Gaussian bumps, then each step moves mass between
    two random squares. ``p_init`` sets the square's area, halved on the paper's schedule rescaled to
    ``queries``. Each forward of a sample counts one query, the clean one included, and no sample gets more
    than ``queries``; fooled samples stop. Differences from the paper's code: windows are drawn per sample,
    and a linf square that would change nothing has its signs flipped rather than redrawn.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    gradient_free: ClassVar[bool] = True
    queries: int = 5000
    p_init: float = 0.8

    def __post_init__(self) -> None:
        if self.threat.norm == "l1":
            raise ConfigError("Square supports norm 'linf' and 'l2', not 'l1': use PGD or APGD for l1")
        if self.queries < 1:
            raise ConfigError(f"queries must be >= 1, got {self.queries}")
        if not 0 < self.p_init <= 1:
            raise ConfigError(f"p_init must lie in (0, 1], got {self.p_init}")

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        return self._search(model, x, y, targets, generator)[0]

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
            x_adv, used = self._search(model, x, y, targets, generator)
        return self.threat.project(x_adv, x), used

    @torch.no_grad()
    def _search(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        def score(points: Tensor, labels: Tensor, aims: Tensor | None) -> tuple[Tensor, Tensor]:
            """Loss to minimise (the margin, <= 0 once fooled) and success, one query per row."""
            logits = model(points)
            loss = margin(logits, labels) if aims is None else -margin(logits, aims)
            return loss, is_adversarial(logits, labels, aims)

        used = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        best_loss, fooled = score(x, y, targets)
        best = x.clone()
        if self.queries < 2 or self.threat.eps == 0:
            return best, used
        idx = (~fooled).nonzero().squeeze(1)
        if idx.numel() == 0:
            return best, used
        # The samples still standing, kept compact: they are only re-gathered when some are fooled.
        x_s, y_s = x[idx], y[idx]
        aims_s = None if targets is None else targets[idx]
        best_s = self._init(x_s, generator)
        # linf squares set pixels to x +- eps (clamped): both images, computed once per standing set.
        ends_s = (
            (self.threat.clamp(x_s + self.threat.eps), self.threat.clamp(x_s - self.threat.eps))
            if self.threat.norm == "linf"
            else None
        )
        loss_s, success = score(best_s, y_s, aims_s)
        queried = 1  # queries each standing sample has made since the last write-back
        for iteration in range(self.queries - 1):
            # One sync per iteration: write back and drop the fooled samples, if any.
            if iteration == self.queries - 2 or bool(success.any()):
                best[idx], best_loss[idx] = best_s, loss_s
                fooled[idx] = success
                used[idx] += queried
                queried = 0
                keep = (~success).nonzero().squeeze(1)
                if keep.numel() == 0 or iteration == self.queries - 2:
                    break
                if keep.numel() < idx.numel():
                    idx, x_s, y_s = idx[keep], x_s[keep], y_s[keep]
                    best_s, loss_s = best_s[keep], loss_s[keep]
                    ends_s = None if ends_s is None else (ends_s[0][keep], ends_s[1][keep])
                    aims_s = None if aims_s is None else aims_s[keep]
            p = square_fraction(self.p_init, iteration, self.queries)
            if ends_s is not None:
                candidate, window = self._propose_linf(*ends_s, best_s, p, generator)
            else:
                candidate = self._propose(x_s, best_s, p, generator)
            loss, success = score(candidate, y_s, aims_s)
            queried += 1
            improved = success | (loss < loss_s)
            if ends_s is not None:
                # The candidate differs from the best point only inside its square: copy just that.
                pixels, values, current = window
                kept = torch.where(improved.reshape(-1, 1, 1), values, current)
                best_s = best_s.flatten(2).scatter_(2, pixels, kept).view_as(best_s)
            else:
                best_s = torch.where(improved.reshape(-1, 1, 1, 1), candidate, best_s)
            loss_s = torch.where(improved, loss, loss_s)
        return best, used

    def _init(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        n, c, h, w = x.shape
        eps = self.threat.eps
        if self.threat.norm == "linf":
            return self.threat.clamp(x + eps * _signs((n, c, 1, w), generator, x.device, x.dtype))
        size = max(h // 5, 1)
        offset = (h - 5 * size) // 2
        pattern = square_pattern(size, x.device)
        delta = torch.zeros_like(x)
        for top in range(offset, offset + size * (h // size), size):
            for left in range(offset, offset + size * (w // size), size):
                if top + size > h or left + size > w:
                    continue
                corner = (torch.full((n,), top, device=x.device), torch.full((n,), left, device=x.device))
                bump = _place(pattern, *corner, h, w, generator).to(x.dtype)
                delta = delta + bump * _signs((n, c, 1, 1), generator, x.device, x.dtype)
        return self.threat.clamp(x + delta / _image_norm(delta).clamp_min(1e-12) * eps)

    def _propose_linf(
        self, high: Tensor, low: Tensor, best: Tensor, p: float, generator: torch.Generator | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """A linf proposal: one random square per sample set to x + eps or x - eps per channel (clamped).

        Only the square's pixels are gathered and compared; if the square would change nothing, its signs
        are flipped. Returns the candidate and (pixel indices (n, c, side^2), their new and their current
        values). Shape: high, low, best (n, C, H, W) -> candidate like best.
        """
        n, c, h, w = best.shape
        side = min(max(round(math.sqrt(p * h * w)), 1), h, w)
        _, _, pixels = _random_square(n, c, side, h, w, generator, best.device)
        signs = _signs((n, c, 1, 1), generator, best.device, best.dtype).reshape(n, c, 1)
        up, down = high.flatten(2).gather(2, pixels), low.flatten(2).gather(2, pixels)
        current = best.flatten(2).gather(2, pixels)
        values = torch.where(signs > 0, up, down)
        unchanged = ((values - current).abs() <= 1e-7).flatten(1).all(dim=1)
        # Flipping every channel's sign always changes such a square (eps > 0).
        values = torch.where(unchanged.reshape(-1, 1, 1), torch.where(signs > 0, down, up), values)
        candidate = best.flatten(2).clone().scatter_(2, pixels, values).view_as(best)
        return candidate, (pixels, values, current)

    def _propose(self, x: Tensor, best: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
        """An l2 proposal (``_propose_linf`` makes the linf ones): the mass of two random squares (and what is
        left of the budget) goes into the first, reshaped by the paper's bump; the second is emptied.

        Only the two squares' pixels are gathered and rewritten; the whole image is touched once, by the final
        rescaling to the eps-sphere. Shape: x, best (n, C, H, W) -> like best.
        """
        n, c, h, w = x.shape
        eps = self.threat.eps
        side = max(round(math.sqrt(p * h * w)), 3)
        side = min(side + 1 - side % 2, h, w)
        rows1, cols1, pixels1 = _random_square(n, c, side, h, w, generator, x.device)
        rows2, cols2, pixels2 = _random_square(n, c, side, h, w, generator, x.device)
        # Pixels of the second square that the first one covers too (counted once in the budget).
        top1, left1 = rows1[:, :1], cols1[:, :1]
        shared_rows = (rows2 >= top1) & (rows2 < top1 + side)
        shared_cols = (cols2 >= left1) & (cols2 < left1 + side)
        shared = (shared_rows.unsqueeze(2) & shared_cols.unsqueeze(1)).reshape(n, 1, side * side)
        delta = (best - x).flatten(2)
        inside1, inside2 = delta.gather(2, pixels1), delta.gather(2, pixels2)
        mass1 = inside1.pow(2).sum(dim=2, keepdim=True)
        mass_both = mass1 + (inside2 * ~shared).pow(2).sum(dim=2, keepdim=True)
        total = delta.pow(2).sum(dim=(1, 2), keepdim=True)
        budget = ((eps**2 - total).clamp_min(0) / c + mass_both).sqrt()
        old = inside1 / (mass1.sqrt() + 1e-12)
        pattern = square_pattern(side, x.device)
        flip = torch.randint(0, 2, (n,), generator=generator, device=x.device)
        bump = torch.stack((pattern.flatten(), pattern.t().flatten()))[flip].to(x.dtype).unsqueeze(1)
        fresh = bump * _signs((n, c, 1), generator, x.device, x.dtype) + old
        fresh = fresh / (fresh.pow(2).sum(dim=2, keepdim=True).sqrt() + 1e-12) * budget
        # delta is this call's own tensor (best - x): written in place once its squares have been read.
        delta = delta.scatter_(2, pixels2, 0.0).scatter_(2, pixels1, fresh).view_as(x)
        return self.threat.clamp(x + delta / _image_norm(delta).clamp_min(1e-12) * eps)
