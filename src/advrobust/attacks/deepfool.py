"""DeepFool: iterated linearisation of the nearest decision boundary, a minimum-norm attack."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, register_attack
from advrobust.attacks.losses import is_adversarial
from advrobust.contract import eval_mode
from advrobust.errors import ConfigError
from advrobust.threat import Norm, norm_of


def logit_gaps(model: nn.Module, x: Tensor, ref: Tensor, classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gaps ``z_c - z_ref`` to each candidate class and their input gradients: one forward, one backward per
    candidate.

    Per-sample gradients come from the gradient of the batch sum, which is exact because a model in eval
    mode treats samples independently.
    Shape: x (N, C, H, W), ref (N,), classes (N, m) -> gaps (N, m), grads (N, m, C, H, W), logits (N, K).
    """
    x = x.detach().requires_grad_(True)
    m = classes.shape[1]
    with torch.enable_grad():
        logits = model(x)
        gaps = logits.gather(1, classes) - logits.gather(1, ref.unsqueeze(1))
        grads = [torch.autograd.grad(gaps[:, j].sum(), x, retain_graph=j < m - 1)[0] for j in range(m)]
    return gaps.detach(), torch.stack(grads, dim=1), logits.detach()


def dual_norm(grads: Tensor, norm: Norm) -> Tensor:
    """The dual norm over the trailing image dims: l1 for linf, l2 for l2. Shape: (N, m, ...) -> (N, m)."""
    flat = grads.flatten(2)
    if norm == "linf":
        return flat.abs().sum(dim=2)
    size: Tensor = torch.linalg.vector_norm(flat, ord=2, dim=2)
    return size


def other_classes(y: Tensor, num_classes: int) -> Tensor:
    """Every class but the label, in increasing order. Shape: (N,) -> (N, K - 1)."""
    k = torch.arange(num_classes - 1, device=y.device).expand(y.shape[0], -1)
    return k + (k >= y.unsqueeze(1)).long()


def _expand(per_sample: Tensor, like: Tensor) -> Tensor:
    return per_sample.reshape(-1, *([1] * (like.dim() - 1)))


@register_attack("deepfool")
@dataclass(frozen=True, kw_only=True)
class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli et al., 2016, arXiv:1511.04599), linf and l2, untargeted only.

    Each step linearises the gaps to the ``candidates - 1`` runner-up classes (ranked by the clean logits, as
    in Foolbox), steps onto the nearest linearised boundary, and the total step is scaled by
    ``1 + overshoot``. A sample stops as soon as it is misclassified. ``run_min_norm`` gives the minimal
    points and their distances; the Attack call projects them onto the eps-ball.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64 -> x_adv like x.
    """

    steps: int = 50
    overshoot: float = 0.02
    candidates: int = 10

    def __post_init__(self) -> None:
        if self.threat.norm == "l1":
            raise ConfigError("DeepFool supports norm 'linf' and 'l2', not 'l1': use PGD or APGD for l1")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.candidates < 2:
            raise ConfigError(f"candidates must be >= 2 (the label and a rival), got {self.candidates}")
        if not self.overshoot >= 0:
            raise ConfigError(f"overshoot must be >= 0, got {self.overshoot}")

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        return self._min_norm(model, x, y, targets)[0]

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

        Distances are in the threat's norm, 0 for samples misclassified already, ``inf`` where DeepFool
        failed (those samples come back unchanged). Shape: -> x_adv like x, distances (N,) float64.
        """
        x = x.detach()
        if check:
            self._check(model, x, y, targets)
        with eval_mode(model):
            return self._min_norm(model, x, y, targets)

    def _min_norm(
        self, model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if targets is not None:
            raise ConfigError("DeepFool is untargeted: drop targets, or use FAB or PGD for targeted attacks")
        threat = self.threat
        with torch.no_grad():
            logits = model(x)
        # Rivals ranked by the clean logits, fixed for the whole run as in Foolbox.
        num_rivals = min(self.candidates, logits.shape[1]) - 1
        rivals = logits.scatter(1, y.unsqueeze(1), float("-inf")).topk(num_rivals, dim=1).indices
        x_adv = x.clone()
        found = is_adversarial(logits, y, None)
        # One sync per step to shrink the batch to the samples still standing: DeepFool needs few steps.
        idx = (~found).nonzero().squeeze(1)
        x0, y0, rivals = x[idx], y[idx], rivals[idx]
        current = x0.clone()
        total = torch.zeros_like(x0)
        for _ in range(self.steps):
            if idx.numel() == 0:
                break
            gaps, grads, logits = logit_gaps(model, current, y0, rivals)
            fooled = is_adversarial(logits, y0, None)
            x_adv[idx[fooled]] = current[fooled]
            found[idx[fooled]] = True
            keep = ~fooled
            idx, x0, y0, rivals = idx[keep], x0[keep], y0[keep], rivals[keep]
            gaps, grads, total = gaps[keep], grads[keep], total[keep]
            if idx.numel() == 0:
                break
            # The nearest linearised boundary, and the step that reaches it (a hair beyond, as in Foolbox).
            distance = gaps.abs() / (dual_norm(grads, threat.norm) + 1e-8)
            best = distance.argmin(dim=1)
            rows = torch.arange(best.shape[0], device=best.device)
            grad = grads[rows, best]
            step_size = distance[rows, best] + 1e-4
            if threat.norm == "linf":
                direction = grad.sign()
            else:
                direction = grad / _expand(norm_of(grad, "l2") + 1e-8, grad)
            total = total + _expand(step_size, direction) * direction
            current = threat.clamp(x0 + (1 + self.overshoot) * total)
        if idx.numel() > 0:
            with torch.no_grad():
                fooled = is_adversarial(model(current), y0, None)
            x_adv[idx[fooled]] = current[fooled]
            found[idx[fooled]] = True
        distance = threat.distance(x_adv, x)
        return x_adv, torch.where(found, distance, torch.full_like(distance, float("inf")))
