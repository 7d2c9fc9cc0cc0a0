"""Time of one optimizer step: PyTorch's per-tensor loop vs ``foreach`` vs ``fused`` (what the trainer uses).

Adam (lr 1e-3) and SGD (momentum 0.9, weight decay 5e-4) on small-cnn and preact-resnet18 with random
gradients; the best of ``--repeats`` timings of ``--steps`` steps (fewer for the ResNet).

Usage:
    python benchmarks/optimizer_step.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

import advrobust

MODELS = (("small-cnn", 1, 100), ("preact-resnet18", 3, 5))
VARIANTS: tuple[tuple[str, dict[str, bool]], ...] = (
    ("per-tensor", {"foreach": False}),
    ("foreach", {"foreach": True}),
    ("fused", {"fused": True}),
)


def step_ms(
    name: str,
    channels: int,
    cls: type[torch.optim.Optimizer],
    options: dict[str, object],
    steps: int,
    repeats: int,
) -> float:
    torch.manual_seed(0)
    model = advrobust.create_model(name, num_classes=10, in_channels=channels)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer = cls(model.parameters(), **options)  # type: ignore[call-arg]
    for _ in range(3):
        optimizer.step()
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        best = min(best, (time.perf_counter() - tick) / steps * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); ms per step")
    optimizers: tuple[tuple[type[torch.optim.Optimizer], dict[str, object]], ...] = (
        (torch.optim.Adam, {"lr": 1e-3}),
        (torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}),
    )
    for name, channels, steps in MODELS:
        for cls, options in optimizers:
            times = {
                label: step_ms(name, channels, cls, {**options, **extra}, steps, args.repeats)
                for label, extra in VARIANTS
            }
            cells = ", ".join(f"{label} {ms:.3f}" for label, ms in times.items())
            print(
                f"  {name:16s} {cls.__name__:5s}: {cells}; per-tensor / fused {times['per-tensor'] / times['fused']:.1f}x"
            )


if __name__ == "__main__":
    main()
