"""Carlini-Wagner L2: a minimum-norm attack by Adam on a tanh-reparametrised input, binary search on c."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, register_attack
from advrobust.attacks.losses import margin
from advrobust.contract import eval_mode
from advrobust.errors import ConfigError

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


@register_attack("cw")
@dataclass(frozen=True, kw_only=True)
class CW(Attack):
    """Carlini & Wagner L2 attack (2017, arXiv:1608.04644), minimising ``||x' - x||_2^2 + c * f(x')``.

    x' = low + (high - low) * (tanh(w) + 1) / 2 keeps the bounds; Adam (learning rate ``step_size``)
    runs ``steps`` iterations per value of c, stopping early once no sample's objective fell by 0.01% over
    a tenth of the steps; c starts at ``initial_const`` and is searched per sample (``binary_search_steps``).
    f is the margin loss with ``confidence`` kappa. Each sample keeps its smallest-L2 success; samples never
    fooled come back unchanged. Only ``norm="l2"``.

    Surprising: CW is minimum-norm, so the threat's eps is only the budget of the base class's final
    projection: an adversarial farther than eps is pulled back onto the eps ball and may no longer fool.
    ``run_min_norm`` returns the unprojected points and their distances (for robustness curves).
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    steps: int = 1000
    binary_search_steps: int = 9
    initial_const: float = 1e-3
    confidence: float = 0.0
    step_size: float = 0.01
    abort_early: bool = True

    def __post_init__(self) -> None:
        if self.threat.norm != "l2":
            raise ConfigError(
                f"CW is an l2 attack, got norm={self.threat.norm!r}: use ThreatModel(norm='l2')"
            )
        for field in ("steps", "binary_search_steps"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{field} must be >= 1, got {getattr(self, field)}")
        if not self.initial_const > 0:
            raise ConfigError(f"initial_const must be > 0, got {self.initial_const}: the paper uses 1e-3")
        if not self.confidence >= 0:
            raise ConfigError(f"confidence must be >= 0, got {self.confidence}")
        if not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}: the paper uses 0.01")

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        x_adv, _ = self._minimize(model, x, y, targets)
        return x_adv

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
        """The minimum-norm result, not projected onto the eps ball (CW is deterministic: ``generator``
        is accepted for the common minimum-norm signature and unused).

        Returns (x_adv, distance): each sample's smallest-L2 adversarial (x itself where none was found)
        and its L2 distance to x in float64 (inf where none was found).
        Shape: x (N, C, H, W), y (N,) -> x_adv like x, distance (N,).
        """
        x = x.detach()
        if check:
            self._check(model, x, y, targets)
        with eval_mode(model):
            return self._minimize(model, x, y, targets)

    def _success(self, logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        """Misclassified (or on target) with at least ``confidence`` to spare. Shape: (N,) bool."""
        cls = y if targets is None else targets
        shift = self.confidence if targets is None else -self.confidence
        adjusted = logits.scatter_add(1, cls.unsqueeze(1), torch.full_like(logits[:, :1], shift))
        pred = adjusted.argmax(dim=1)
        return pred != y if targets is None else pred == targets

    def _objective(self, logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        """f of the paper: max(z_y - max_{j != y} z_j + kappa, 0), or its targeted form. Shape: (N,)."""
        lead = margin(logits, y) if targets is None else -margin(logits, targets)
        return (lead + self.confidence).clamp_min(0)

    def _minimize(
        self, model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        low, high = self.threat.bounds
        half = (high - low) / 2
        n = x.shape[0]
        const = torch.full((n,), self.initial_const, device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, 1e10)
        best = x.clone()
        best_dist2 = torch.full_like(const, float("inf"))
        check_every = max(1, self.steps // 10)
        for _ in range(self.binary_search_steps):
            # As in the paper, every value of c starts afresh from x with a new Adam state (w recomputed rather
            # than kept: one image-sized buffer less alive through the steps). Just inside (-1, 1): atanh of
            # the bounds themselves is infinite.
            w = torch.atanh(((x - low) / half - 1).clamp(-1 + 1e-6, 1 - 1e-6))
            m = torch.zeros_like(w)
            v = torch.zeros_like(w)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            previous = torch.full_like(const, float("inf"))
            for step in range(self.steps):
                w.requires_grad_(True)
                with torch.enable_grad():
                    x_adv = self.threat.clamp(low + half * (torch.tanh(w) + 1))
                    logits = model(x_adv)
                    # (x_adv - x)^2 as mse_loss: the same values and gradient, and its backward keeps x_adv
                    # and x (alive anyway) instead of the difference (one image-sized tensor less at the peak).
                    dist2 = nn.functional.mse_loss(x_adv, x, reduction="none").reshape(n, -1).sum(dim=1)
                    objective = dist2 + const * self._objective(logits, y, targets)
                    (grad,) = torch.autograd.grad(objective.sum(), w)
                with torch.no_grad():
                    x_adv, dist2, objective = x_adv.detach(), dist2.detach(), objective.detach()
                    success = self._success(logits.detach(), y, targets)
                    closer = success & (dist2 < best_dist2)
                    torch.where(closer.reshape(-1, *([1] * (x.dim() - 1))), x_adv, best, out=best)
                    best_dist2 = torch.where(closer, dist2, best_dist2)
                    succeeded = succeeded | success
                    # Adam, in the buffers of this run (best, m, v and w are its own): the same operations in
                    # the same order as m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g g,
                    # w = w - lr m_hat / (sqrt(v_hat) + eps), without an image-sized tensor per operation.
                    m.mul_(_BETA1).add_(torch.mul(grad, 1 - _BETA1))
                    v.mul_(_BETA2).add_(torch.mul(grad, 1 - _BETA2).mul_(grad))
                    del grad
                    denominator = torch.div(v, 1 - _BETA2 ** (step + 1)).sqrt_().add_(_ADAM_EPS)
                    update = torch.div(m, 1 - _BETA1 ** (step + 1)).mul_(self.step_size).div_(denominator)
                    w = w.detach().sub_(update)
                    del denominator, update
                if self.abort_early and step % check_every == 0:
                    if bool((objective > 0.9999 * previous).all()):  # one sync per check
                        break
                    previous = objective
            # Success: c can shrink (bisect down); failure: c must grow (x10 until bracketed, then bisect).
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
        found = torch.isfinite(best_dist2)
        distance = torch.where(
            found, self.threat.distance(best, x), torch.full_like(best_dist2, float("inf"))
        )
        return best, distance.to(torch.float64)
