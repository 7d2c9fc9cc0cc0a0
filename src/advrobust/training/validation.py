"""Robust validation: clean and PGD accuracy of a model on held-out samples, with a fixed seed."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advrobust.attacks import PGD
from advrobust.contract import eval_mode
from advrobust.data import BatchLoader, ImageDataset
from advrobust.threat import ThreatModel


def robust_accuracy(
    model: nn.Module,
    data: ImageDataset,
    threat: ThreatModel,
    *,
    steps: int = 10,
    seed: int = 0,
    batch_size: int = 500,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """(clean, robust) accuracy of ``model`` on ``data`` under PGD-``steps`` (one restart, seeded).

    Robust counts a sample when it is classified correctly both clean and at the attack's point.
    Shape: data images (N, C, H, W) uint8.
    """
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(seed)
    attack = PGD(threat=threat, steps=steps)
    clean = torch.zeros((), dtype=torch.long, device=device)
    robust = torch.zeros((), dtype=torch.long, device=device)
    for x, y in BatchLoader(data, batch_size=batch_size, device=device):
        ok, still = correct_under(model, attack, x, y, generator)
        clean += ok.sum()
        robust += still.sum()
    n = max(1, len(data))
    return int(clean) / n, int(robust) / n


def correct_under(
    model: nn.Module, attack: PGD, x: Tensor, y: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Per-sample (clean correct, correct both clean and under ``attack``). Shape: (N,) bool each."""
    with torch.no_grad(), eval_mode(model):
        ok = model(x).argmax(dim=1) == y
    x_adv = attack(model, x, y, generator=generator, check=False)
    with torch.no_grad(), eval_mode(model):
        still = ok & (model(x_adv).argmax(dim=1) == y)
    return ok, still
