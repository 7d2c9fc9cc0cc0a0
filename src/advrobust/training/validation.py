"""Validation during training: clean accuracy, and clean and robust accuracy on samples held out of the training data.

Robust validation attacks with APGD (cross-entropy) by default rather than fixed-step PGD: on single-step
adversarial training, whose gradients can be masked, PGD-10 chose Fast-AT epochs that the ``standard``
suite rated 6.6-16 points below the ones APGD-CE-20 chose, for about 1.5x PGD-10's time (a few percent of
an epoch's; two runs, benchmarks/RESULTS.md, "Choosing the epoch").
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from advrobust.attacks import APGD, PGD, Attack
from advrobust.contract import eval_mode
from advrobust.data import BatchLoader, ImageDataset
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

#: Held-out samples for robust validation when ``robust_val`` is None (at most a tenth of the data).
DEFAULT_ROBUST_VAL = 500

ValAttack = Literal["apgd", "pgd"]
VAL_ATTACKS: tuple[str, ...] = get_args(ValAttack)


def check_val_attack(name: object) -> None:
    """Raise ConfigError unless ``name`` is a robust-validation attack (``VAL_ATTACKS``)."""
    if name not in VAL_ATTACKS:
        raise ConfigError(f"unknown robust_val_attack {name!r}: choose one of {', '.join(VAL_ATTACKS)}")


def validation_attack(name: str, threat: ThreatModel, steps: int) -> Attack:
    """The robust-validation attack: ``"apgd"`` APGD-CE (Croce & Hein, 2020), ``"pgd"`` PGD (step 2.5 eps / steps).

    Either with ``steps`` iterations and one restart.
    """
    check_val_attack(name)
    return APGD(threat=threat, steps=steps) if name == "apgd" else PGD(threat=threat, steps=steps)


def validation_label(name: str, steps: int) -> str:
    """How the robust-validation attack is named in messages, e.g. "APGD-CE-20" or "PGD-10"."""
    check_val_attack(name)
    return f"APGD-CE-{steps}" if name == "apgd" else f"PGD-{steps}"


@torch.no_grad()
def accuracy(
    model: nn.Module, data: ImageDataset, *, batch_size: int = 512, device: torch.device | None = None
) -> float:
    """Clean accuracy of ``model`` on ``data`` (eval mode, restored afterwards)."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = torch.zeros((), dtype=torch.long, device=device)
    with eval_mode(model):
        for x, y in BatchLoader(data, batch_size=batch_size, device=device):
            correct += (model(x).argmax(dim=1) == y).sum()
    return int(correct) / max(1, len(data))


def holdout_split(
    data: ImageDataset, robust_val: int | None, threat: ThreatModel | None, *, seed: int
) -> tuple[ImageDataset, ImageDataset | None]:
    """(training data, ``robust_val`` held-out samples or None): a seeded random choice, each part in data order.

    ``robust_val=None`` holds out 500 samples (at most a tenth of the data) for adversarial objectives, none
    for clean ones (``threat`` None).
    """
    if threat is None:
        if robust_val:
            raise ConfigError(
                "robust_val needs an adversarial objective (one with a threat model): "
                "drop robust_val or choose e.g. pgd-at"
            )
        return data, None
    n = min(DEFAULT_ROBUST_VAL, len(data) // 10) if robust_val is None else robust_val
    if n == 0:
        return data, None
    if n > len(data) // 2:
        raise ConfigError(
            f"robust_val={n} would hold out more than half of the {len(data)} training samples: "
            "pass a smaller robust_val, or 0 to turn robust validation off"
        )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    keep, held = order[:-n].sort().values, order[-n:].sort().values
    return data.subset(keep), data.subset(held)


def robust_accuracy(
    model: nn.Module,
    data: ImageDataset,
    threat: ThreatModel,
    *,
    attack: ValAttack = "apgd",
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 500,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """(clean, robust) accuracy of ``model`` on ``data`` under ``validation_attack(attack, threat, steps)``
    (one restart, seeded).

    Robust counts a sample when it is classified correctly both clean and at the attack's point.
    Shape: data images (N, C, H, W) uint8.
    """
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(seed)
    chosen = validation_attack(attack, threat, steps)
    clean = torch.zeros((), dtype=torch.long, device=device)
    robust = torch.zeros((), dtype=torch.long, device=device)
    for x, y in BatchLoader(data, batch_size=batch_size, device=device):
        ok, still = correct_under(model, chosen, x, y, generator)
        clean += ok.sum()
        robust += still.sum()
    n = max(1, len(data))
    return int(clean) / n, int(robust) / n


def correct_under(
    model: nn.Module, attack: Attack, x: Tensor, y: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Per-sample (clean correct, correct both clean and under ``attack``). Shape: (N,) bool each."""
    with torch.no_grad(), eval_mode(model):
        ok = model(x).argmax(dim=1) == y
    x_adv = attack(model, x, y, generator=generator, check=False)
    with torch.no_grad(), eval_mode(model):
        still = ok & (model(x_adv).argmax(dim=1) == y)
    return ok, still
