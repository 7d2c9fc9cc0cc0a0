"""Distillation defenses: defensive distillation as published, and adversarially robust distillation.

Defensive distillation (Papernot et al., 2016, arXiv:1511.04508) trains a teacher with its softmax at a
temperature T, then a student on the teacher's soft labels at T, and deploys the student at T = 1. Its logits
are then about T times larger than a normally trained network's: the softmax saturates, cross-entropy
gradients vanish, and cross-entropy attacks report robustness that margin/DLR attacks on the logits take away
(Carlini & Wagner, 2017, arXiv:1607.04311). Evaluate a distilled model with ``--suite standard`` or
``--loss margin``; the audit's "logits" and "loss-choice" checks flag it.

Robust distillation (ARD, Goldblum et al., 2020, arXiv:1905.09747) trains the student on adversarial examples
against itself to match an adversarially trained teacher's soft labels, so that a smaller student keeps much
of the teacher's robustness.

Importing this module registers the ``temperature-ce``, ``distillation`` and ``robust-distillation`` objectives.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.contract import eval_mode
from advrobust.data import ImageDataset
from advrobust.errors import ConfigError
from advrobust.models.registry import Classifier, unwrap_model
from advrobust.threat import ThreatModel
from advrobust.training import StepInfo, TrainConfig, TrainResult, register_objective, train
from advrobust.training.adversarial import (
    AdversarialObjective,
    AttackMode,
    ascend,
    attack_context,
    check_attack_mode,
    check_int,
    check_number,
    cross_entropy_of,
    kl_from,
)

InnerLoss = Literal["ce", "kl"]


def describe_teacher(teacher: nn.Module) -> dict[str, Any]:
    """A JSON fingerprint of a teacher: its architecture, parameter count and the sha256 of its state.

    ``state_sha256`` hashes the tensors themselves (names, dtypes, shapes, bytes), so a run resumed with
    another teacher is refused; it is not the file checksum (``weights_sha256``) of a saved model.
    """
    net = unwrap_model(teacher)
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return {
        "arch": net.arch if isinstance(net, Classifier) else type(net).__name__,
        "parameters": sum(p.numel() for p in net.parameters()),
        "state_sha256": digest.hexdigest(),
    }


def _check_teacher(name: str, teacher: object) -> None:
    if teacher is None:
        raise ConfigError(
            f"{name} needs a trained teacher: pass teacher=model (on the command line, --teacher RUN_DIR)"
        )
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"{name}: teacher must be an nn.Module, got {type(teacher).__name__}")


@torch.no_grad()
def soft_labels(teacher: nn.Module, x: Tensor, temperature: float) -> Tensor:
    """The teacher's softmax at ``temperature``, in eval mode and without gradients. Shape: (N, ...) -> (N, K)."""
    # The teacher follows the student's device: the trainer moves only the student.
    first = next(teacher.parameters(), None)
    if first is not None and first.device != x.device:
        teacher.to(x.device)
    with eval_mode(teacher):
        return F.softmax(teacher(x).float() / temperature, dim=1)


def _params(objective: Any) -> dict[str, Any]:
    """Hyperparameters as JSON: the teacher as its fingerprint, a threat model as its dict."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(objective):
        if f.init:
            value = getattr(objective, f.name)
            if isinstance(value, nn.Module):
                value = describe_teacher(value)
            elif isinstance(value, ThreatModel):
                value = value.to_dict()
            out[f.name] = value
    return out


@register_objective("temperature-ce")
@dataclass(frozen=True, kw_only=True)
class TemperatureCE:
    """Cross-entropy of the softmax at ``temperature``: CE(z / T, y), the teacher's training in defensive
    distillation (Papernot et al., 2016, arXiv:1511.04508; T = 100 is their MNIST choice).

    The model keeps returning its raw logits z, deployed at T = 1: they come out about T times larger than a
    normally trained network's, so its softmax saturates (see the module docstring).
    Shape: x (N, C, H, W), y (N,) -> (loss, logits (N, K)).
    """

    name: ClassVar[str] = "temperature-ce"
    temperature: float = 100.0

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature)

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits.float() / self.temperature, y), logits

    def params(self) -> dict[str, Any]:
        return _params(self)


@register_objective("distillation")
@dataclass(frozen=True, kw_only=True)
class Distillation:
    """Defensive distillation's student (Papernot et al., 2016, arXiv:1511.04508): match the teacher's soft
    labels at ``temperature``, alpha * KL(teacher(x)/T || student(x)/T) + (1 - alpha) * CE(student(x)/T, y).

    Both terms are at T, the temperature the student trains at; ``alpha`` 1 (soft labels only) is the paper's.
    The teacher runs in eval mode without gradients; the student is deployed at T = 1 (its raw logits), which
    is what saturates its softmax. Train the teacher with ``temperature-ce`` at the same T (``distill`` does).
    Shape: x (N, C, H, W), y (N,) -> (loss, student logits (N, K)).
    """

    name: ClassVar[str] = "distillation"
    teacher: nn.Module | None = None
    temperature: float = 100.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        _check_teacher("distillation", self.teacher)
        check_number("temperature", self.temperature)
        check_number("alpha", self.alpha, high=1.0, strict=False)

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        assert self.teacher is not None  # checked in __post_init__
        target = soft_labels(self.teacher, x, self.temperature)
        logits = model(x)
        scaled = logits.float() / self.temperature
        loss = kl_from(target, scaled).mean()
        if self.alpha < 1:
            loss = self.alpha * loss + (1 - self.alpha) * F.cross_entropy(scaled, y)
        return loss, logits

    def params(self) -> dict[str, Any]:
        return _params(self)


@register_objective("robust-distillation")
@dataclass(frozen=True, kw_only=True)
class RobustDistillation(AdversarialObjective):
    """Adversarially robust distillation, ARD (Goldblum et al., 2020, arXiv:1905.09747):
    alpha * T^2 * KL(teacher(x)/T || student(x')/T) + (1 - alpha) * CE(student(x), y).

    x' is the last of ``steps`` PGD steps against the student from a random start (``ThreatModel.random_start``),
    maximising the student's cross-entropy on y as in the paper and its code (``inner_loss="ce"``), or, with
    ``inner_loss="kl"``, the KL term itself (the teacher's soft labels as the target, as in RSLAD, Zi et al.,
    2021). Defaults from the paper's code: T 30, alpha 1, 10 steps of eps / 4. The KL is summed over the
    classes as in the paper's equation; the reference code's KLDivLoss also divides it by the class count.
    The teacher (adversarially trained, e.g. with pgd-at or trades) runs in eval mode without gradients.
    Shape: x (N, C, H, W) in threat.bounds, y (N,) -> (loss, adversarial student logits (N, K)).
    """

    name: ClassVar[str] = "robust-distillation"
    teacher: nn.Module | None = None
    temperature: float = 30.0
    alpha: float = 1.0
    steps: int = 10
    step_size: float | None = None
    inner_loss: InnerLoss = "ce"
    attack_mode: AttackMode = "eval"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_teacher("robust-distillation", self.teacher)
        check_number("temperature", self.temperature)
        check_number("alpha", self.alpha, high=1.0, strict=False)
        check_int("steps", self.steps)
        if self.step_size is not None:
            check_number("step_size", self.step_size)
        if self.inner_loss not in ("ce", "kl"):
            raise ConfigError(f"inner_loss must be 'ce' or 'kl', got {self.inner_loss!r}")
        check_attack_mode(self.attack_mode)

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        assert self.teacher is not None  # checked in __post_init__
        t = self.temperature
        target = soft_labels(self.teacher, x, t)
        inner: Callable[[Tensor], Tensor] = (
            cross_entropy_of(y) if self.inner_loss == "ce" else lambda logits: kl_from(target, logits / t)
        )
        step_size = self.step_size if self.step_size is not None else self.threat.eps / 4
        start = self.threat.random_start(x, generator)
        with attack_context(model, self.attack_mode):
            x_adv = ascend(model, x, start, inner, threat=self.threat, steps=self.steps, step_size=step_size)
        logits_adv = model(x_adv)
        loss = t * t * kl_from(target, logits_adv.float() / t).mean()
        if self.alpha < 1:
            clean = F.cross_entropy(model(x).float(), y)
            loss = self.alpha * loss + (1 - self.alpha) * clean
        return loss, logits_adv

    def params(self) -> dict[str, Any]:
        return _params(self)


@dataclass
class Distilled:
    """What ``distill`` returns: the trained student and teacher, and their training histories.

    ``teacher_result`` is None when the teacher was given already trained.
    """

    student: nn.Module
    teacher: nn.Module
    result: TrainResult
    teacher_result: TrainResult | None


def fresh_copy(model: nn.Module) -> nn.Module:
    """The same architecture with freshly initialised weights (torch's global generator: seed it)."""
    clone = copy.deepcopy(unwrap_model(model))
    for module in clone.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return clone


def distill(
    teacher: nn.Module,
    data: ImageDataset,
    *,
    student: nn.Module | None = None,
    temperature: float = 100.0,
    alpha: float = 1.0,
    train_teacher: bool = False,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[StepInfo], None] | None = None,
) -> Distilled:
    """Defensive distillation (Papernot et al., 2016, arXiv:1511.04508) with the shared trainer.

    With ``train_teacher`` the ``teacher`` is first trained in place with ``temperature-ce`` at
    ``temperature``; otherwise it is taken as trained. The ``student`` (default: a freshly initialised copy
    of the teacher's architecture, as in the paper) then trains on the teacher's soft labels at the same
    temperature, mixed with hard labels when ``alpha`` < 1, and is returned in eval mode to be deployed at
    T = 1: its logits saturate the softmax, so evaluate it with margin/DLR losses, not cross-entropy alone.
    ``out_dir`` gets the student's checkpoint, and ``out_dir/teacher`` the teacher's when it trains here.
    Shape: data images (N, C, H, W) uint8.
    """
    config = config or TrainConfig()
    out = Path(out_dir) if out_dir is not None else None
    student = student if student is not None else fresh_copy(teacher)
    teacher_result = None
    if train_teacher:
        teacher_result = train(
            teacher,
            data,
            objective=TemperatureCE(temperature=temperature),
            config=config,
            out_dir=out / "teacher" if out is not None else None,
            device=device,
            progress=progress,
        )
    teacher.eval()
    result = train(
        student,
        data,
        objective=Distillation(teacher=teacher, temperature=temperature, alpha=alpha),
        config=config,
        out_dir=out,
        device=device,
        progress=progress,
    )
    return Distilled(student=student, teacher=teacher, result=result, teacher_result=teacher_result)
