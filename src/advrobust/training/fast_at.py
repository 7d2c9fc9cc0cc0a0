"""Fast adversarial training (Wong, Rice & Kolter, 2020): FGSM from a random start, with an overfitting guard."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust import distributed
from advrobust.errors import ConfigError
from advrobust.training.adversarial import (
    AdversarialObjective,
    AttackMode,
    ascend,
    attack_context,
    check_attack_mode,
    check_int,
    check_number,
    cross_entropy_of,
)
from advrobust.training.callbacks import Callback
from advrobust.training.guard import OverfitGuard
from advrobust.training.objectives import register_objective

_LEVELS = 127  # int8 codes of the kept perturbations: the largest coordinate of each sample maps to +-127


def _all_rows(rows: Tensor) -> Tensor:
    """Every process's ``rows`` (same shape in each), concatenated in rank order."""
    parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts)


class _Prior:
    """Each training sample's last perturbation (x_adv - x), kept between epochs for ``prior_start``.

    Stored as int8 codes with one float32 scale per sample (a quarter of float32's memory: 47 MB for MNIST's
    60,000 images), so a coordinate comes back within 1/254 of its sample's largest one. ``seen`` marks the
    samples that have a perturbation; the others start from the uniform draw. With ``capacity`` (the number
    of training samples, which the trainer gives) the store is allocated once at that size; without it, it
    grows to the largest position given so far, which reads that position back to the host.
    """

    def __init__(self) -> None:
        self.capacity: int | None = None
        self.codes: Tensor | None = None
        self.scales: Tensor | None = None
        self.seen: Tensor | None = None

    def _reserve(self, index: Tensor, like: Tensor) -> None:
        shape = like.shape[1:]
        if self.codes is not None and self.codes.shape[1:] != shape:
            raise ConfigError(
                f"prior_start keeps one perturbation per training sample of shape {tuple(self.codes.shape[1:])}, "
                f"got samples of shape {tuple(shape)}: train one data set per objective, or reset it with "
                "load_state_dict({})"
            )
        # A checkpoint loads on the CPU: resumed on a GPU, the store follows the batches there.
        if (
            self.codes is not None
            and self.scales is not None
            and self.seen is not None
            and self.codes.device != like.device
        ):
            self.codes, self.scales, self.seen = (
                t.to(like.device) for t in (self.codes, self.scales, self.seen)
            )
        have = 0 if self.codes is None else self.codes.shape[0]
        # Without capacity, exactly to the largest position: over a shuffled epoch it comes within a few batches.
        largest = int(index.max()) + 1 if self.capacity is None and index.numel() else 0
        n = self.capacity if self.capacity is not None else largest
        if n <= have:
            return
        codes = torch.zeros((n, *shape), dtype=torch.int8, device=like.device)
        scales = torch.zeros(n, dtype=torch.float32, device=like.device)
        seen = torch.zeros(n, dtype=torch.bool, device=like.device)
        if self.codes is not None and self.scales is not None and self.seen is not None:
            codes[:have], scales[:have], seen[:have] = self.codes, self.scales, self.seen
        self.codes, self.scales, self.seen = codes, scales, seen

    def start(self, index: Tensor, x: Tensor, fallback: Tensor) -> Tensor:
        """x plus each sample's kept perturbation; ``fallback``'s row for samples without one."""
        self._reserve(index, x)
        assert self.codes is not None and self.scales is not None and self.seen is not None
        codes, scales, seen = self.codes[index], self.scales[index], self.seen[index]
        unit = (scales / _LEVELS).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        kept = x + codes.to(x.dtype) * unit
        return torch.where(seen.view_as(unit), kept, fallback)

    def keep(self, index: Tensor, delta: Tensor) -> None:
        """Remember ``delta`` (N, ...) as the perturbation of the samples at ``index`` (N,).

        Under torchrun every process passes its own batch (of the same size, as the trainer's equal shards
        give) and keeps every process's rows, so each store holds what one process would have.
        """
        flat = delta.detach().float().flatten(1)
        scale = flat.abs().amax(dim=1)
        # A zero or non-finite perturbation is not kept: that sample starts from the uniform draw next time.
        usable = torch.isfinite(scale) & (scale > 0)
        scale = torch.where(usable, scale, torch.zeros_like(scale))
        unit = (scale / _LEVELS).clamp_min(torch.finfo(torch.float32).tiny)
        codes = torch.round(flat.nan_to_num(0.0) / unit[:, None]).clamp_(-_LEVELS, _LEVELS).to(torch.int8)
        if distributed.info().enabled:
            index, codes, scale = (_all_rows(t) for t in (index, codes, scale))
            usable = _all_rows(usable.to(torch.uint8)).bool()  # gloo gathers no bool tensors
        self._reserve(index, delta)
        assert self.codes is not None and self.scales is not None and self.seen is not None
        self.codes[index] = codes.view(-1, *delta.shape[1:])
        self.scales[index] = scale
        self.seen[index] = usable

    def state_dict(self) -> dict[str, Any]:
        if self.codes is None:
            return {}
        assert self.scales is not None and self.seen is not None
        return {"codes": self.codes.clone(), "scales": self.scales.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        codes, scales, seen = state.get("codes"), state.get("scales"), state.get("seen")
        if isinstance(codes, Tensor) and isinstance(scales, Tensor) and isinstance(seen, Tensor):
            self.codes, self.scales, self.seen = codes.clone(), scales.clone(), seen.clone()
        else:
            self.codes = self.scales = self.seen = None


@register_objective("fast-at")
@dataclass(frozen=True, kw_only=True)
class FastAT(AdversarialObjective):
    """ "Fast is better than free" adversarial training (Wong, Rice & Kolter, 2020, arXiv:2001.03994).

    One FGSM step of ``step_size`` (default 1.25 * eps) from a uniform random start in the eps-ball, then
    the projection onto the eps-ball and the bounds. As in the paper's code the start is not clipped to the
    bounds (``clip_start=True`` clips it): on MNIST, whose pixels sit mostly at 0 or 1, a clipped start
    followed by a 1.25 eps step lands on the same corner for nearly every saturated pixel, i.e. plain FGSM
    training, which overfits catastrophically (PGD-40 accuracy 2-12% in our full-MNIST runs). FGSM
    training can overfit catastrophically (robustness to PGD collapses within an epoch), so ``guard`` (on by
    default) measures PGD-``guard_steps`` accuracy on the first ``guard_samples`` training images at each
    epoch end (and every ``guard_every`` steps if set); when it falls more than ``guard_drop`` below its best
    at more than ``guard_patience`` checks in a row (default 1: one dip that recovers at the next check passes),
    the last good weights are restored and training stops. The paper pairs it with a cyclic learning rate:
    ``schedule="cyclic"``.

    ``prior_start=True`` starts each sample's step from its own perturbation of the previous epoch instead
    of the uniform draw (the prior-guided start of Jia et al., 2022, arXiv:2207.08859; cf. Zheng et al.'s
    ATTA, 2020, arXiv:1912.11969), a sample's first visit from the uniform draw: the perturbation then
    accumulates over the epochs like a PGD spread across them, at the same cost of one gradient per batch.
    Its step defaults to 0.5 * eps (1.25 * eps from a start already on the ball's surface flips whole
    images to the opposite corner; on MNIST at eps 0.3 it did not become robust). The trainer passes the
    samples' positions (``index``); the objective keeps one int8 perturbation per training sample (its
    state, checkpointed; under torchrun the processes share theirs at every step, so each keeps all).
    ``prior_reg`` (lambda, default 0: off) adds Jia et al.'s prior-guided regularizer, lambda times the mean
    squared difference of the logits at the adversarial point and at the start (one more forward and
    backward per batch; the paper uses 10 with its prior start).
    Shape: x (N, C, H, W) in threat.bounds, y (N,) -> (loss, adversarial logits (N, K)).
    """

    step_size: float | None = None
    random_start: bool = True
    clip_start: bool = False
    attack_mode: AttackMode = "eval"
    guard: bool = True
    guard_every: int | None = None
    guard_samples: int = 512
    guard_steps: int = 10
    guard_drop: float = 0.2
    guard_patience: int = 1
    prior_start: bool = False
    prior_reg: float = 0.0
    _prior: _Prior = field(default_factory=_Prior, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_size is not None:
            check_number("step_size", self.step_size)
        check_attack_mode(self.attack_mode)
        if self.guard_every is not None:
            check_int("guard_every", self.guard_every)
        check_int("guard_samples", self.guard_samples)
        check_int("guard_steps", self.guard_steps)
        check_number("guard_drop", self.guard_drop, high=1.0)
        check_int("guard_patience", self.guard_patience, low=0)
        check_number("prior_reg", self.prior_reg, strict=False)

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        if self.step_size is not None:
            return self.step_size
        return (0.5 if self.prior_start else 1.25) * self.threat.eps

    @property
    def sample_index(self) -> bool:
        """Whether ``loss`` needs the batch's sample positions (``index``): with ``prior_start``."""
        return self.prior_start

    def loss(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        generator: torch.Generator | None,
        index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        start = self.threat.random_init(x, generator, clip=self.clip_start) if self.random_start else x
        if self.prior_start:
            if (
                index is None
                or index.shape != y.shape
                or index.is_floating_point()
                or index.is_complex()
                or index.dtype == torch.bool
            ):
                raise ConfigError(
                    "fast-at with prior_start needs each sample's position in the training data: pass "
                    "index, an (N,) integer tensor, with the batch (advrobust's trainer does), or drop prior_start"
                )
            start = self._prior.start(index, x, start)
        with attack_context(model, self.attack_mode):
            x_adv = ascend(
                model,
                x,
                start,
                cross_entropy_of(y),
                threat=self.threat,
                steps=1,
                step_size=self.alpha,
                project_start=self.clip_start,
            )
        if self.prior_start:
            assert index is not None
            self._prior.keep(index, x_adv - x)
        logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y)
        if self.prior_reg > 0:
            # The attack's start projected into the ball and the bounds (the attack took its gradient there
            # unprojected unless clip_start), through the model in its training mode.
            at_start = model(self.threat.project(start.detach(), x))
            loss = loss + self.prior_reg * F.mse_loss(logits.float(), at_start.float())
        return loss, logits

    def reserve_samples(self, num_samples: int) -> None:
        """Size the per-sample store for positions 0..num_samples-1 (the trainer calls this)."""
        check_int("num_samples", num_samples)
        self._prior.capacity = num_samples

    def state_dict(self) -> dict[str, Any]:
        """The kept perturbations (``prior_start``; empty otherwise), for checkpoints."""
        return self._prior.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s perturbations; ``{}`` forgets them (a fresh start)."""
        self._prior.load_state_dict(state)

    def callbacks(self) -> list[Callback]:
        if not self.guard:
            return []
        return [
            OverfitGuard(
                threat=self.threat,
                every=self.guard_every,
                samples=self.guard_samples,
                steps=self.guard_steps,
                drop=self.guard_drop,
                patience=self.guard_patience,
            )
        ]
