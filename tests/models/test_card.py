from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.errors import ConfigError, ModelFileError
from advrobust.models import Classifier, ModelCard


def test_json_round_trip_is_exact(tiny_card: ModelCard) -> None:
    card = replace(tiny_card, weights_sha256="ab" * 32)
    text = json.dumps(card.to_dict(), allow_nan=False)
    again = ModelCard.from_dict(json.loads(text))
    assert again == card
    assert (
        again.input_shape == (1, 12, 12) and again.mean == (0.1307,) and again.classes == tuple("0123456789")
    )
    assert again.model_kwargs == {"input_size": 12}
    assert again.training["steps"] == [40, 10]
    assert again.format_version == 1 and again.torch_version and again.advrobust_version and again.created


def test_from_model_reads_the_model(tiny_model: Classifier) -> None:
    card = ModelCard.from_model(tiny_model, input_shape=(1, 12, 12))
    assert (card.arch, card.num_classes, card.in_channels) == ("small-cnn", 10, 1)
    assert (card.mean, card.std, card.model_kwargs) == ((0.1307,), (0.3081,), {"input_size": 12})
    assert card.weights_sha256 == ""
    with pytest.raises(ConfigError, match="needs a model built by create_model"):
        ModelCard.from_model(nn.Linear(2, 2), input_shape=(1, 12, 12))


def test_dict_fields_are_stored_as_their_json() -> None:
    card = ModelCard(
        arch="small-cnn", num_classes=10, in_channels=1, input_shape=(1, 28, 28), metrics={1: (0.5, 2)}
    )
    assert card.metrics == {"1": [0.5, 2]}
    with pytest.raises(ConfigError, match="metrics is not JSON"):
        ModelCard(
            arch="small-cnn",
            num_classes=10,
            in_channels=1,
            input_shape=(1, 28, 28),
            metrics={"a": float("nan")},
        )
    with pytest.raises(ConfigError, match="training is not JSON"):
        ModelCard(
            arch="small-cnn", num_classes=10, in_channels=1, input_shape=(1, 28, 28), training={"f": object()}
        )


def _valid(card: ModelCard) -> dict[str, Any]:
    return replace(card, weights_sha256="0" * 64).to_dict()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"format_version": 2}, "newer than this advrobust reads.*upgrade advrobust"),
        ({"format_version": "1"}, "format_version '1' is not one advrobust knows"),
        ({"format_version": True}, "format_version True is not one advrobust knows"),
        ({"arch": None}, "model card lacks field\\(s\\) \\['arch'\\]: re-save"),
        ({"colour": "red"}, "unknown field\\(s\\) \\['colour'\\]"),
        ({"num_classes": 1}, "invalid model card: .*num_classes must be an integer >= 2"),
        ({"input_shape": [3, 12, 12]}, "does not start with in_channels"),
        ({"input_shape": [1, 12]}, "input_shape must be \\(C, H, W\\)"),
        ({"mean": None}, "mean and std come together"),
        ({"std": [0.0]}, "std must be > 0"),
        ({"classes": ["a", "b"]}, "classes must be num_classes=10 names"),
        ({"weights_sha256": "xyz"}, "weights_sha256 must be empty or 64 lowercase hex"),
        ({"metrics": []}, "metrics must be a dict"),
    ],
)
def test_bad_cards_are_model_file_errors(tiny_card: ModelCard, change: dict[str, Any], words: str) -> None:
    data = _valid(tiny_card)
    for key, value in change.items():
        if value is None and key == "arch":
            del data[key]
        else:
            data[key] = value
    with pytest.raises(ModelFileError, match=words) as info:
        ModelCard.from_dict(data)
    assert "\n" not in str(info.value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(sorted(ModelCard.__dataclass_fields__)), value=JSON)
def test_any_json_value_in_any_field_gives_a_card_or_model_file_error(field: str, value: Any) -> None:
    base = ModelCard(
        arch="small-cnn", num_classes=2, in_channels=1, input_shape=(1, 28, 28), mean=[0.5], std=[1.0]
    )
    data = base.to_dict()
    data[field] = value
    try:
        card = ModelCard.from_dict(data)
    except ModelFileError as exc:
        assert "\n" not in str(exc)
    else:
        assert ModelCard.from_dict(card.to_dict()) == card


@given(value=JSON)
def test_non_object_json_is_refused(value: Any) -> None:
    if isinstance(value, dict):
        return
    with pytest.raises(ModelFileError, match="must be a JSON object"):
        ModelCard.from_dict(value)
