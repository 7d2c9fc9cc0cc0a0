"""`advrobust defend`, `eval --suite adaptive` and `advrobust certify` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advrobust.cli import main
from advrobust.defenses import InputTransformDefense
from advrobust.models import load_model, read_card


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    code = main(["train", "--epochs", "1", "--batch-size", "64", "--out", str(root / "std"), "--quiet"])
    assert code == 0
    return root


@pytest.fixture(scope="module")
def defended(runs: Path) -> Path:
    out = runs / "jpeg"
    args = ["defend", "--model", str(runs / "std"), "--out", str(out)]
    assert main([*args, "--transform", "jpeg:75", "--transform", "bitdepth:4"]) == 0
    return out


def test_defend_saves_a_model_that_loads_behind_its_transforms(runs: Path, defended: Path) -> None:
    out = defended
    card = read_card(out)
    assert card.training["defense"] == {
        "wrapper": "input-transform",
        "transforms": [{"name": "jpeg", "quality": 75}, {"name": "bitdepth", "bits": 4}],
    }
    assert card.training["defended_from"]["weights_sha256"] == read_card(runs / "std").weights_sha256
    assert card.metrics == {}  # the source's accuracies do not describe the defended model
    model = load_model(out)
    assert isinstance(model, InputTransformDefense) and not model.differentiable
    # Defending a defended model appends the new transforms.
    assert (
        main(["defend", "--model", str(out), "--transform", "blur:0.5", "--out", str(runs / "jpeg-blur")])
        == 0
    )
    stacked = load_model(runs / "jpeg-blur")
    assert isinstance(stacked, InputTransformDefense)
    assert [t.name for t in stacked.chain()] == ["jpeg", "bitdepth", "blur"]


def test_adaptive_suite_measures_the_defense_honestly(
    defended: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["eval", "--model", str(defended), "--eps", "0.2", "--n", "12", "--quiet"]
    assert main([*common, "--attack", "pgd", "--json", str(tmp_path / "naive.json")]) == 0
    # The naive number is printed with a warning that names the fix, and is marked in the JSON.
    printed = " ".join(capsys.readouterr().out.split())
    assert "warning: the model declares a non-differentiable part but pgd-40 ran without BPDA" in printed
    assert "--suite adaptive" in printed
    assert main([*common, "--suite", "adaptive", "--json", str(tmp_path / "adaptive.json")]) == 0
    naive = json.loads((tmp_path / "naive.json").read_text())["results"][0]
    adaptive = json.loads((tmp_path / "adaptive.json").read_text())["results"][0]
    assert [a["name"] for a in adaptive["attacks"]] == ["bpda", "bpda", "bpda", "square"]
    assert adaptive["attacks"][0]["params"]["attack"]["name"] == "apgd"
    assert naive["robust"]["correct"] >= 10 and adaptive["robust"]["correct"] <= 2
    assert naive["meta"]["upper_bound"] and "adaptive_note" not in adaptive["meta"]
    assert "warning" not in capsys.readouterr().out


def test_certify_writes_certificates(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cert.json"
    args = ["certify", "--model", str(runs / "std"), "--n", "200", "--n0", "20", "--images", "10", "--quiet"]
    assert main([*args, "--sigma", "0.25", "--alpha", "0.01", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "advrobust.certify/1"
    assert data["sigma"] == 0.25 and data["n"] == 200 and data["alpha"] == 0.01
    assert len(data["radius"]) == len(data["prediction"]) == len(data["labels"]) == 10
    assert data["radii"] == [0.0, 0.25, 0.5, 1.0] and data["certified"][0] >= data["certified"][-1]
    assert data["accuracy"] > 0.7 and data["meta"]["data"]["n"] == 10
    assert "Certified l2 accuracy" in capsys.readouterr().out
    # A model not trained with gaussian-augment needs --sigma.
    assert main(args) == 2
    assert "--sigma" in capsys.readouterr().err


def test_certify_takes_sigma_from_a_noise_trained_model(runs: Path, tmp_path: Path) -> None:
    noisy = runs / "noise"
    train = ["train", "--defense", "gaussian-augment", "--sigma", "0.5", "--epochs", "1", "--quiet"]
    assert main([*train, "--out", str(noisy)]) == 0
    assert read_card(noisy).training["objective"] == {"name": "gaussian-augment", "sigma": 0.5}
    out = tmp_path / "cert.json"
    certify = ["certify", "--model", str(noisy), "--n", "100", "--n0", "10", "--images", "5", "--quiet"]
    assert main([*certify, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["sigma"] == 0.5
    # --sigma belongs to gaussian-augment only.
    assert main(["train", "--sigma", "0.5", "--out", str(runs / "nope"), "--quiet"]) == 2
