from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.errors import ConfigError, ModelFileError
from advrobust.models import Classifier, ModelCard, create_model, load_model, read_card, save_model

CORRUPT = "weights do not match card.json: the file is corrupt or was replaced; retrain or restore it"
PICKLE = "pickle-based model files are not loaded \\(they can run code\\); convert to safetensors"


def _install(run: Path, data: bytes) -> None:
    """Put ``data`` in place of the weights and make the card's checksum agree, to reach the checks after it."""
    (run / "model.safetensors").write_bytes(data)
    card = json.loads((run / "card.json").read_text())
    card["weights_sha256"] = hashlib.sha256(data).hexdigest()
    (run / "card.json").write_text(json.dumps(card))


def _load_error(path: Path) -> str:
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_round_trip_is_bit_identical(saved_run: Path, tiny_model: Classifier, tiny_card: ModelCard) -> None:
    assert sorted(p.name for p in saved_run.iterdir()) == ["card.json", "model.safetensors"]
    card = read_card(saved_run)
    assert card.weights_sha256 == hashlib.sha256((saved_run / "model.safetensors").read_bytes()).hexdigest()
    assert card == replace(tiny_card, weights_sha256=card.weights_sha256)
    x = torch.rand(5, 1, 12, 12)
    expected = tiny_model.eval()(x)
    for path in (saved_run, saved_run / "model.safetensors", str(saved_run)):
        loaded = load_model(path)
        assert isinstance(loaded, Classifier) and not loaded.training
        assert torch.equal(loaded(x), expected)
        assert read_card(path) == card
    assert read_card(saved_run / "card.json") == card


def test_batchnorm_state_dtype_and_layout_survive(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(
        "wrn-28-10", num_classes=3, in_channels=3, depth=10, widen_factor=1, mean=[0.5] * 3, std=[0.25] * 3
    )
    model(torch.rand(4, 3, 8, 8))  # train mode: moves the BatchNorm running statistics
    model = model.double().to(memory_format=torch.channels_last)
    card = ModelCard.from_model(model, input_shape=(3, 8, 8), training={"objective": "standard"})
    loaded = load_model(save_model(model, tmp_path / "wrn", card))
    assert loaded.net.block1.layer[0].bn1.num_batches_tracked.item() == 1  # type: ignore[union-attr,index]
    original, again = model.state_dict(), loaded.state_dict()
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) and again[k].dtype == original[k].dtype for k in original)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    model.eval()
    # Memory layout is a run-time choice, not part of the file: compare like with like.
    assert torch.equal(loaded(x), model.to(memory_format=torch.contiguous_format)(x))
    cl = torch.channels_last
    assert torch.equal(loaded.to(memory_format=cl)(x.to(memory_format=cl)), model.to(memory_format=cl)(x))
    assert all(p.requires_grad for p in loaded.parameters())


def test_save_replaces_a_previous_model_and_unwraps_data_parallel(
    saved_run: Path, tiny_card: ModelCard
) -> None:
    torch.manual_seed(1)
    other = create_model("small-cnn", mean=[0.1307], std=[0.3081], input_size=12)
    save_model(nn.DataParallel(other), saved_run, tiny_card)
    x = torch.rand(2, 1, 12, 12)
    assert torch.equal(load_model(saved_run)(x), other.eval()(x))
    assert not [p for p in saved_run.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"arch": "madry-cnn"}, "does not match its card \\(missing keys net.3.bias"),
        (
            {"num_classes": 5, "classes": None},
            "does not match its card \\(shape mismatch net.7.bias \\(10,\\) vs \\(5,\\)",
        ),
        (
            {"model_kwargs": {"input_size": 28}},
            "shape mismatch net.5.weight \\(100, 288\\) vs \\(100, 1568\\)",
        ),
        ({"mean": (0.5,)}, "normalize.mean is \\[0.130"),
        ({"mean": None, "std": None}, "unexpected keys normalize.mean, normalize.std"),
        ({"arch": "nope"}, "the card cannot rebuild the model: unknown model 'nope'"),
    ],
)
def test_save_refuses_a_card_that_does_not_describe_the_model(
    tmp_path: Path, tiny_model: Classifier, tiny_card: ModelCard, change: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        save_model(tiny_model, tmp_path / "run", replace(tiny_card, **change))
    assert not (tmp_path / "run").exists()


def test_save_wants_a_directory(tmp_path: Path, tiny_model: Classifier, tiny_card: ModelCard) -> None:
    with pytest.raises(ConfigError, match="takes a run directory"):
        save_model(tiny_model, tmp_path / "model.safetensors", tiny_card)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a run directory"):
        save_model(tiny_model, tmp_path / "file", tiny_card)


def test_corrupt_truncated_or_swapped_weights_fail_the_checksum(saved_run: Path, tmp_path: Path) -> None:
    weights = saved_run / "model.safetensors"
    good = weights.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    weights.write_bytes(bytes(flipped))
    assert CORRUPT in _load_error(saved_run)
    weights.write_bytes(good[:-100])
    assert CORRUPT in _load_error(saved_run)
    torch.manual_seed(5)
    other = create_model("small-cnn", mean=[0.1307], std=[0.3081], input_size=12)
    other_run = save_model(other, tmp_path / "other", ModelCard.from_model(other, input_shape=(1, 12, 12)))
    shutil.copyfile(other_run / "model.safetensors", weights)
    assert CORRUPT in _load_error(saved_run / "model.safetensors")
    weights.write_bytes(good)
    load_model(saved_run)  # restored: loads again


def test_weights_of_another_model_with_a_consistent_checksum(saved_run: Path, tmp_path: Path) -> None:
    madry = create_model("madry-cnn", input_size=12)
    save_model(madry, tmp_path / "madry", ModelCard.from_model(madry, input_shape=(1, 12, 12)))
    _install(saved_run, (tmp_path / "madry" / "model.safetensors").read_bytes())
    assert (
        "does not fit its card (missing keys net.2.bias, net.2.weight, net.5.bias and 3 more, unexpected keys net.3"
        in _load_error(saved_run)
    )
    wide = create_model("small-cnn", num_classes=3, mean=[0.1307], std=[0.3081], input_size=12)
    save_model(wide, tmp_path / "wide", ModelCard.from_model(wide, input_shape=(1, 12, 12)))
    _install(saved_run, (tmp_path / "wide" / "model.safetensors").read_bytes())
    assert "does not fit its card (shape mismatch net.7.bias (3,) vs (10,)" in _load_error(saved_run)


def test_bad_header_lengths(saved_run: Path) -> None:
    good = (saved_run / "model.safetensors").read_bytes()
    body = good[8:]
    _install(saved_run, (2**40).to_bytes(8, "little") + body)
    assert "header length 1099511627776 is over the 100 MB limit" in _load_error(saved_run)
    _install(saved_run, (len(body) + 1).to_bytes(8, "little") + body)
    assert "is truncated (header of" in _load_error(saved_run)
    _install(saved_run, (10).to_bytes(8, "little") + body)
    assert "is not a valid safetensors file" in _load_error(saved_run)
    _install(saved_run, b"\x01\x02")
    assert "is truncated (2 bytes, no safetensors header)" in _load_error(saved_run)


class _Boom:
    """Unpickling this creates a marker file: proof that a pickle was (or was not) executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    "name", ["model.pt", "model.pth", "weights.pkl", "pytorch_model.bin", "last.ckpt", "m.pth.tar"]
)
def test_pickle_files_are_never_opened(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "executed"
    bad = tmp_path / "run" / name
    bad.parent.mkdir()
    bad.write_bytes(pickle.dumps(_Boom(marker)))
    assert pickle.loads(bad.read_bytes()) is None and marker.exists()  # the trap works...
    marker.unlink()
    with pytest.raises(ModelFileError, match=PICKLE):
        load_model(bad)
    with pytest.raises(ModelFileError, match=PICKLE):
        read_card(bad)
    if not name.endswith(".tar"):
        with pytest.raises(ModelFileError, match=f"no model.safetensors in .*, only {name}: {PICKLE}"):
            load_model(bad.parent)
    assert not marker.exists()  # ...and was never sprung


def test_missing_files_and_bad_cards(saved_run: Path, tmp_path: Path) -> None:
    fix = "train one with `advrobust train` or pass the run directory"
    assert f"no model at {tmp_path / 'absent'}: {fix}" in _load_error(tmp_path / "absent")
    assert f"no model at {tmp_path / 'absent'}" in _load_error(tmp_path / "absent" / "model.safetensors")
    (tmp_path / "empty").mkdir()
    assert f"(model.safetensors is missing): {fix}" in _load_error(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hi")
    assert "is not a model file" in _load_error(tmp_path / "notes.txt")

    card_path = saved_run / "card.json"
    good = card_path.read_text()
    card_path.write_text(good[:-20])
    assert "card.json is not valid JSON (" in _load_error(saved_run)
    card_path.write_bytes(b"\xff\xfe")
    assert "card.json is not valid JSON (" in _load_error(saved_run)
    card_path.write_text(good.replace('"format_version": 1', '"format_version": 7'))
    assert "newer than this advrobust reads (1): upgrade advrobust" in _load_error(saved_run)
    card_path.write_text(json.dumps({**json.loads(good), "weights_sha256": ""}))
    assert "has no weights_sha256: re-save the model" in _load_error(saved_run)
    card_path.write_text(json.dumps({**json.loads(good), "arch": "vit-huge"}))
    assert "cannot rebuild the model: unknown model 'vit-huge'" in _load_error(saved_run)
    card_path.write_text(json.dumps({**json.loads(good), "model_kwargs": {"input_size": "big"}}))
    assert "cannot rebuild the model: input_size must be a positive int or (H, W), got 'big'" in _load_error(
        saved_run
    )
    card_path.unlink()
    assert f"(card.json is missing): {fix}" in _load_error(saved_run)
    with pytest.raises(ModelFileError, match=r"card\.json is missing"):
        read_card(saved_run)


def test_random_bytes_are_a_model_file_error(saved_run: Path) -> None:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.binary(max_size=512))
    def check(data: bytes) -> None:
        _install(saved_run, data)
        _load_error(saved_run)

    check()


_ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "Q4"]),
        "shape": st.lists(st.integers(0, 4), max_size=3) | st.lists(st.integers(-1, 2**62), max_size=3),
        "data_offsets": st.tuples(st.integers(0, 64), st.integers(0, 64)).map(list)
        | st.lists(st.integers(-1, 2**64), max_size=3),
    }
)
_TENSORS = st.dictionaries(
    st.sampled_from(["net.0.weight", "net.0.bias", "net.7.bias", "normalize.mean", "x", ""]),
    st.one_of(_ENTRY, _ENTRY, _ENTRY, _ENTRY, st.integers(), st.none()),  # mostly well-formed entries
    max_size=4,
)
_METADATA = st.dictionaries(
    st.text(max_size=3), st.one_of(st.text(max_size=3), st.text(max_size=3), st.integers()), max_size=2
)
_HEADER = st.tuples(_TENSORS, st.none() | _METADATA).map(
    lambda parts: parts[0] if parts[1] is None else {**parts[0], "__metadata__": parts[1]}
)


def test_plausible_but_wrong_safetensors_are_a_model_file_error(saved_run: Path) -> None:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(header=_HEADER, payload=st.binary(max_size=64), slack=st.sampled_from([0, 0, 0, -1, 1, 7]))
    def check(header: dict[str, Any], payload: bytes, slack: int) -> None:
        text = json.dumps(header).encode()
        _install(saved_run, (len(text) + slack).to_bytes(8, "little", signed=False) + text + payload)
        _load_error(saved_run)

    check()


def test_saving_the_same_weights_gives_the_same_checksum(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from advrobust.models import ModelCard, create_model, save_model\n"
        "torch.manual_seed(0)\n"
        "m = create_model('small-cnn')\n"
        "save_model(m, sys.argv[1], ModelCard.from_model(m, input_shape=(1, 28, 28)))\n"
    )
    digests = set()
    for i in range(3):  # separate processes: hash-map ordering differs between them
        out = tmp_path / f"run{i}"
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=120)
        digests.add((out / "model.safetensors").read_bytes())
    assert len(digests) == 1
