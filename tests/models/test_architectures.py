from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from advrobust.errors import ConfigError
from advrobust.models import create_model

# (name, options, in_channels, (H, W), num_classes): small configurations so the suite stays fast.
CASES = [
    ("small-cnn", {}, 1, (28, 28), 10),
    ("small-cnn", {"input_size": (20, 16)}, 3, (20, 16), 4),
    ("madry-cnn", {}, 1, (28, 28), 10),
    ("madry-cnn", {"input_size": 12}, 2, (12, 12), 3),
    ("preact-resnet18", {}, 3, (32, 32), 10),
    ("wrn-28-10", {"depth": 10, "widen_factor": 1}, 3, (32, 32), 10),
    ("wrn-34-10", {"depth": 10, "widen_factor": 2, "drop_rate": 0.3}, 3, (32, 32), 7),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def _build(name: str, options: dict[str, Any], channels: int, classes: int) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=classes, in_channels=channels, **options).eval()


@pytest.mark.parametrize(("name", "options", "channels", "size", "classes"), CASES, ids=IDS)
def test_logits_shape_and_input_gradients(
    name: str, options: dict[str, Any], channels: int, size: tuple[int, int], classes: int
) -> None:
    model = _build(name, options, channels, classes)
    x = torch.rand(2, channels, *size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, classes)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(("name", "options", "channels", "size", "classes"), CASES, ids=IDS)
def test_eval_is_batch_independent_and_channels_last(
    name: str, options: dict[str, Any], channels: int, size: tuple[int, int], classes: int
) -> None:
    model = _build(name, options, channels, classes)
    x = torch.rand(2, channels, *size)
    with torch.no_grad():
        batched = model(x)
        one_by_one = torch.cat([model(x[i : i + 1]) for i in range(2)])
        torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-5)
        model_cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(
            model_cl(x.to(memory_format=torch.channels_last)), batched, rtol=1e-4, atol=1e-5
        )


def test_real_size_parameter_counts() -> None:
    # Built on the meta device: the structure without memory or initialisation.
    with torch.device("meta"):
        counts = {
            name: sum(p.numel() for p in create_model(name, in_channels=3).parameters())
            for name in ("wrn-28-10", "wrn-34-10", "preact-resnet18")
        }
    assert counts == {"wrn-28-10": 36_479_194, "wrn-34-10": 46_160_474, "preact-resnet18": 11_172_170}


def test_layers_follow_the_papers() -> None:
    small = create_model("small-cnn").net
    assert [tuple(p.shape) for p in small.parameters()][::2] == [
        (16, 1, 4, 4),
        (32, 16, 4, 4),
        (100, 1568),
        (10, 100),
    ]
    madry = create_model("madry-cnn").net
    assert [tuple(p.shape) for p in madry.parameters()][::2] == [
        (32, 1, 5, 5),
        (64, 32, 5, 5),
        (1024, 3136),
        (10, 1024),
    ]
    # Key names of the published checkpoints (Rice et al. PreAct ResNet-18, TRADES / RobustBench WRN).
    with torch.device("meta"):
        preact = create_model("preact-resnet18", in_channels=3).state_dict()
        wrn = create_model("wrn-28-10", in_channels=3).state_dict()
    assert {
        "net.conv1.weight",
        "net.layer2.0.shortcut.0.weight",
        "net.bn.weight",
        "net.linear.weight",
    } <= set(preact)
    assert {
        "net.block1.layer.0.convShortcut.weight",
        "net.block3.layer.3.conv2.weight",
        "net.fc.bias",
    } <= set(wrn)
    assert tuple(wrn["net.fc.weight"].shape) == (10, 640)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"depth": 12}, "depth must be 6n \\+ 4"),
        ({"depth": 4}, "depth must be 6n \\+ 4"),
        ({"widen_factor": 0}, "widen_factor must be an integer >= 1"),
        ({"drop_rate": 1.0}, "drop_rate must be in \\[0, 1\\)"),
        ({"drop_rate": "0.3"}, "drop_rate must be in \\[0, 1\\)"),
    ],
)
def test_bad_wrn_options(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        create_model("wrn-28-10", in_channels=3, **options)


@pytest.mark.parametrize(
    ("name", "options", "channels", "size"),
    [("small-cnn", {"input_size": 12}, 1, 12), ("wrn-28-10", {"depth": 10, "widen_factor": 1}, 3, 8)],
)
def test_can_fit_a_small_batch(name: str, options: dict[str, Any], channels: int, size: int) -> None:
    # Gradients reach every layer usefully: a few steps memorise 16 random labels.
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_channels=channels, **options)
    x, y = torch.rand(16, channels, size, size), torch.randint(0, 4, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.9
