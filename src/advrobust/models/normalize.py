"""Per-channel input normalization as a layer, so that a model takes inputs in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advrobust.errors import ConfigError


def check_mean_std(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate per-channel ``mean`` and ``std`` and return them as tuples of floats."""
    mean_t = _floats("mean", mean)
    std_t = _floats("std", std)
    if len(mean_t) != len(std_t):
        raise ConfigError(
            f"mean has {len(mean_t)} values but std has {len(std_t)}: give one value per channel for both"
        )
    if any(s <= 0.0 for s in std_t):
        raise ConfigError(f"std must be > 0 for every channel, got {list(std_t)}: fix the std values")
    return mean_t, std_t


def _floats(name: str, values: Sequence[float]) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{name} must be a sequence of floats, got {values!r}: pass e.g. [0.5, 0.5, 0.5]")
    out: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{name} must hold finite numbers, got {list(values)!r}: fix the {name} values")
        out.append(float(v))
    if not out:
        raise ConfigError(f"{name} is empty: give one value per input channel")
    return tuple(out)


class Normalize(nn.Module):
    """Subtract a per-channel mean and divide by a per-channel std: ``(x - mean) / std``.

    The statistics are buffers, so they travel with the state dict (and the saved weights).

    Shape: x (N, C, H, W) with C == len(mean) -> like x.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t, std_t = check_mean_std(mean, std)
        self.register_buffer("mean", torch.tensor(mean_t, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_t, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[1]}"
