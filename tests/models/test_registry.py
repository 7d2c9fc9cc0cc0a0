from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.errors import ConfigError
from advrobust.models import (
    Classifier,
    Normalize,
    create_model,
    list_models,
    model_options,
    register_model,
    registry,
)


def test_builtin_architectures_are_registered() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"small-cnn", "madry-cnn", "preact-resnet18", "wrn-28-10"} <= set(names)


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet9000': pick one of .*small-cnn"):
        create_model("resnet9000")


def test_register_new_model_and_refuse_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # keep the real registry clean

    @register_model("linear-test")
    def linear(*, num_classes: int, in_channels: int, pixels: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * pixels, num_classes))

    model = create_model("linear-test", num_classes=3, in_channels=1, pixels=4)
    assert model(torch.rand(5, 1, 2, 2)).shape == (5, 3)
    assert "linear-test" in list_models()
    with pytest.raises(ConfigError, match="'linear-test' is already registered"):
        register_model("linear-test")(linear)
    with pytest.raises(ConfigError, match=r"does not take option\(s\) \['width'\]: use only \['pixels'\]"):
        create_model("linear-test", width=3)


def test_normalization_lives_inside_with_stable_keys() -> None:
    plain = create_model("small-cnn")
    normed = create_model("small-cnn", mean=[0.5], std=[0.25])
    assert isinstance(plain.normalize, nn.Identity)
    assert isinstance(normed.normalize, Normalize)
    assert set(normed.state_dict()) - set(plain.state_dict()) == {"normalize.mean", "normalize.std"}
    assert all(k.startswith("net.") for k in plain.state_dict())
    normed.net.load_state_dict(plain.net.state_dict())
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(normed(x), plain((x - 0.5) / 0.25))
    assert (normed.arch, normed.num_classes, normed.in_channels) == ("small-cnn", 10, 1)
    assert (normed.mean, normed.std, normed.model_kwargs) == ((0.5,), (0.25,), {})


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"mean": [0.5]}, "mean and std come together"),
        ({"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}, r"3 values but in_channels=1"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"num_classes": True}, "num_classes must be an integer >= 2"),
        ({"in_channels": 0}, "in_channels must be an integer >= 1"),
        ({"input_size": 3}, "at least 4x4"),
        ({"input_size": (28, 0)}, "input_size must be a positive int"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        create_model("small-cnn", **kwargs)  # type: ignore[arg-type]


def test_classifier_type() -> None:
    assert isinstance(create_model("madry-cnn"), Classifier)


def test_model_options_lists_extra_keywords() -> None:
    assert model_options("small-cnn") == ["input_size"]
    assert model_options("preact-resnet18") == []
    assert model_options("wrn-28-10") == ["depth", "widen_factor", "drop_rate"]
    with pytest.raises(ConfigError, match="unknown model 'x'"):
        model_options("x")
    with pytest.raises(
        ConfigError, match=r"'preact-resnet18' does not take option\(s\) \['depth'\]: use only no extra"
    ):
        create_model("preact-resnet18", depth=3)
