"""bf16 autocast, channels_last and torch.compile for evaluation: same results, float32 attack maths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.accel import Accelerated, accelerate
from advrobust.attacks import PGD
from advrobust.attacks.adaptive import is_differentiable, is_randomized
from advrobust.data import ImageDataset
from advrobust.defenses import BitDepth, GaussianNoise, InputTransformDefense
from advrobust.evaluation import evaluate
from advrobust.threat import ThreatModel

THREAT = ThreatModel(norm="linf", eps=0.1)


@pytest.fixture(scope="module")
def batch(mini_test: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    data = mini_test.take(128)
    return data.images.float() / 255, data.labels


def test_nothing_asked_returns_the_model(trained_cnn: nn.Module) -> None:
    assert accelerate(trained_cnn, "cpu") is trained_cnn


def test_amp_gives_float32_logits_and_nearly_the_same_robust_accuracy(
    trained_cnn: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    fast = accelerate(trained_cnn, "cpu", amp=True, channels_last=True)
    x = batch[0]
    with torch.no_grad():
        logits = fast(x)
        assert logits.dtype == torch.float32
        assert (logits.argmax(1) == trained_cnn(x).argmax(1)).float().mean() > 0.97
    attacks = [PGD(threat=THREAT, steps=10)]
    plain = evaluate(trained_cnn, batch, attacks, seed=0)
    mixed = evaluate(fast, batch, attacks, seed=0)
    assert mixed.attacks[0].violations == 0
    assert mixed.robust.value < mixed.clean.value
    assert abs(mixed.robust.value - plain.robust.value) <= 0.06


def test_compile_matches_eager(trained_cnn: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    # aot_eager traces and runs the same kernels as eager: equal results, no C++ toolchain needed.
    compiled = accelerate(trained_cnn, "cpu", compile=True, compile_backend="aot_eager")
    attacks = [PGD(threat=THREAT, steps=5)]
    eager = evaluate(trained_cnn, batch, attacks, batch_size=64, seed=1)
    traced = evaluate(compiled, batch, attacks, batch_size=64, seed=1)
    assert traced.clean_correct == eager.clean_correct
    assert abs(traced.robust.value - eager.robust.value) <= 0.02


def test_declarations_stay_visible(trained_cnn: nn.Module) -> None:
    squeezed = InputTransformDefense(trained_cnn, [BitDepth(bits=3)])
    fast = accelerate(squeezed, "cpu", amp=True)
    assert isinstance(fast, Accelerated)
    assert not is_differentiable(fast) and is_differentiable(squeezed) is False
    assert callable(fast.bpda_forward)
    noisy = accelerate(InputTransformDefense(trained_cnn, [GaussianNoise(sigma=0.1)]), "cpu", amp=True)
    assert is_randomized(noisy)
