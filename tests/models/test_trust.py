"""Pickle-based model files: state dicts load through the weights-only unpickler; whole pickled models
load only with the file's SHA-256 (``--trust-pickle SHA256``); hostile pickles never run."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from advrobust.cli import main
from advrobust.data import ImageDataset
from advrobust.errors import ConfigError, ModelFileError
from advrobust.models.external import load_external, model_kind

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def images(mini_test: ImageDataset) -> Tensor:
    return mini_test.take(64).images.float() / 255


class _Payload:
    """Unpickling this runs a shell command (what a hostile model file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pickle_suffixes_are_their_own_kind() -> None:
    assert model_kind("model.pt") == model_kind("m.PTH") == model_kind("m.pth.tar") == "pickle"


def test_state_dict_weights_load_through_the_weights_only_unpickler(
    trained_cnn: nn.Module, images: Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_pickle_nets.py").write_text(
        "from advrobust.models import create_model\n\n"
        "def build_model(num_classes=10):\n"
        "    return create_model('small-cnn', num_classes=num_classes, in_channels=1).net\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "net.pt"
    torch.save(trained_cnn.net.state_dict(), weights)  # type: ignore[union-attr]
    external = load_external(
        "my_pickle_nets:build_model", weights=weights, mean=[0.1307], std=[0.3081], input_shape=SHAPE
    )
    with torch.no_grad():
        assert torch.allclose(external.model(images), trained_cnn(images), atol=1e-5)
    assert external.info["weights_sha256"] == _digest(weights)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match=r"not a weights-only file"):
        load_external("my_pickle_nets:build_model", weights=garbage, input_shape=SHAPE)
    # A state dict given as the model is pointed at --weights.
    with pytest.raises(ConfigError, match=r"holds weights.*--weights"):
        load_external(str(weights), input_shape=SHAPE)
    sys.modules.pop("my_pickle_nets", None)


def test_a_pickled_model_loads_only_with_its_digest(
    trained_cnn: nn.Module, images: Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt"
    torch.save(trained_cnn, path)
    with pytest.raises(ModelFileError, match=r"pickled model object.*--trust-pickle SHA256"):
        load_external(str(path), input_shape=SHAPE)
    with pytest.raises(ModelFileError, match=r"not the file you trust"):
        load_external(str(path), input_shape=SHAPE, trust_pickle="0" * 64)
    external = load_external(str(path), input_shape=SHAPE, trust_pickle=_digest(path).upper())
    assert external.kind == "pickle" and external.access == "white-box" and external.num_classes == 10
    assert external.info["sha256"] == _digest(path)
    with torch.no_grad():
        assert torch.equal(external.model(images), trained_cnn(images))


def test_a_hostile_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, data in (
        ("raw.pkl", pickle.dumps(_Payload(marker))),
        ("zipped.pt", None),
    ):
        path = tmp_path / name
        if data is None:
            torch.save({"model": _Payload(marker)}, path)
        else:
            path.write_bytes(data)
        with pytest.raises(ModelFileError, match=r"pickled model object"):
            load_external(str(path), input_shape=SHAPE)
        with pytest.raises(ModelFileError, match=r"not the file you trust"):
            load_external(str(path), input_shape=SHAPE, trust_pickle="ab" * 32)
        assert not marker.exists(), f"{name}: the payload ran"


def test_trust_pickle_takes_a_digest_and_only_for_files_that_need_it() -> None:
    with pytest.raises(ConfigError, match=r"64 hex digits"):
        load_external("model.pt", trust_pickle="yes")
    with pytest.raises(ConfigError, match=r"64 hex digits"):
        load_external("model.pt", trust_pickle=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"applies to .pt2 and pickled .pt files"):
        load_external("model.onnx", trust_pickle="0" * 64)


def test_cli_refuses_then_evaluates_a_trusted_pickled_model(
    trained_cnn: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.pt"
    torch.save(trained_cnn, path)
    args = ["eval", "--model", str(path), "--n", "40", "--attack", "fgsm", "--eps", "0.1", "--quiet"]
    assert main(args) == 2
    assert "--trust-pickle SHA256" in capsys.readouterr().err
    out = tmp_path / "eval.json"
    assert main([*args, "--trust-pickle", _digest(path), "--json", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    assert result["meta"]["model"]["kind"] == "pickle" and result["meta"]["access"] == "white-box"
    assert result["clean"]["correct"] > result["robust"]["correct"]
