"""The small MNIST CNNs used across the adversarial-training literature."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from advrobust.errors import ConfigError
from advrobust.models.registry import register_model


def spatial_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    """``input_size`` as (H, W): an int means a square image."""
    if isinstance(input_size, bool):
        raise ConfigError(f"input_size must be an int or (H, W), got {input_size!r}: pass e.g. 28")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    sizes = tuple(input_size)
    if len(sizes) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ConfigError(f"input_size must be a positive int or (H, W), got {input_size!r}: pass e.g. 28")
    return sizes[0], sizes[1]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _too_small(arch: str, input_size: int | Sequence[int], minimum: int) -> ConfigError:
    return ConfigError(
        f"{arch} needs inputs of at least {minimum}x{minimum}, got {input_size!r}: fix input_size"
    )


@register_model("small-cnn")
def small_cnn(*, num_classes: int, in_channels: int, input_size: int | Sequence[int] = 28) -> nn.Sequential:
    """The MNIST CNN of Wong, Rice & Kolter 2020, "Fast is better than free" (arXiv:2001.03994).

    Two stride-2 4x4 convolutions (16, 32 channels), then a 100-unit hidden layer. ``input_size`` (default
    28) sets the size of the flattened features, so the weights exist before the first forward.

    Shape: x (N, in_channels, H, W) with (H, W) = input_size -> logits (N, num_classes).
    """
    h, w = spatial_size(input_size)
    for _ in range(2):
        h, w = _conv_out(h, 4, 2, 1), _conv_out(w, 4, 2, 1)
    if h < 1 or w < 1:
        raise _too_small("small-cnn", input_size, 4)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * h * w, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@register_model("madry-cnn")
def madry_cnn(*, num_classes: int, in_channels: int, input_size: int | Sequence[int] = 28) -> nn.Sequential:
    """The MNIST model of Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks".

    (arXiv:1706.06083.) Two 5x5 convolutions (32, 64 channels) each followed by 2x2 max pooling, then a
    1024-unit hidden layer. ``input_size`` (default 28) sets the size of the flattened features.

    Shape: x (N, in_channels, H, W) with (H, W) = input_size -> logits (N, num_classes).
    """
    h, w = spatial_size(input_size)
    for _ in range(2):
        h, w = h // 2, w // 2  # 5x5 convolutions with padding 2 keep the size; each pool halves it
    if h < 1 or w < 1:
        raise _too_small("madry-cnn", input_size, 4)
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * h * w, 1024),
        nn.ReLU(),
        nn.Linear(1024, num_classes),
    )
