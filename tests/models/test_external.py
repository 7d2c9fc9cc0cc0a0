"""Models from outside the zoo: ONNX and torch.export files of the same trained CNN, factories, timm."""

from __future__ import annotations

import io
import json
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import Tensor, nn

from advrobust.attacks import PGD
from advrobust.cli import main
from advrobust.data import ImageDataset
from advrobust.errors import ConfigError, ModelFileError
from advrobust.evaluation import evaluate
from advrobust.models import onnx_convert
from advrobust.models.exported import unsafe_parts
from advrobust.models.external import DecisionOnly, ScoreOnly, build_timm, load_external, model_kind
from advrobust.threat import ThreatModel

pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
pytest.importorskip("onnx", reason="the [onnx] extra is not installed")


@pytest.fixture(scope="module")
def files(trained_cnn: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exported")
    example = torch.rand(2, 1, 28, 28)
    onnx_path, pt2_path, static_path = folder / "cnn.onnx", folder / "cnn.pt2", folder / "static.pt2"
    with warnings.catch_warnings():  # the legacy exporter: fast, and needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            trained_cnn, (example,), str(onnx_path), dynamo=False, input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )  # fmt: skip
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(trained_cnn, (example,), dynamic_shapes=({0: batch},)), pt2_path)
    torch.export.save(torch.export.export(trained_cnn, (example,)), static_path)
    return {"onnx": onnx_path, "pt2": pt2_path, "static": static_path}


@pytest.fixture(scope="module")
def test_images(mini_test: ImageDataset) -> tuple[Tensor, Tensor]:
    data = mini_test.take(500)
    return data.images.float() / 255, data.labels


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def test_model_kinds() -> None:
    assert model_kind("http://127.0.0.1:8000") == "remote"
    assert model_kind("timm:resnet18") == "timm"
    assert model_kind("a/b.ONNX") == "onnx"
    assert model_kind("b.pt2") == "export"
    assert model_kind("my_pkg.nets:build") == "factory"
    assert model_kind("runs/model") == "run"


def test_exported_files_give_the_same_clean_accuracy(
    trained_cnn: nn.Module, files: dict[str, Path], test_images: tuple[Tensor, Tensor]
) -> None:
    x, y = test_images
    reference = _predict(trained_cnn, x)
    accuracy = float((reference == y).float().mean())
    assert accuracy > 0.9
    loaded = {
        "onnx white-box": load_external(str(files["onnx"]), probe=x[:32]),
        "onnx runtime": load_external(str(files["onnx"]), access="score"),
        "pt2": load_external(str(files["pt2"])),
        "pt2 static batch": load_external(str(files["static"])),
    }
    for name, external in loaded.items():
        assert torch.equal(_predict(external.model, x), reference), name
        assert external.num_classes == 10 and tuple(external.input_shape or ()) == (1, 28, 28), name
    assert loaded["onnx white-box"].access == "white-box"
    assert loaded["onnx white-box"].info["parity"]["max_abs_diff"] < 1e-4
    assert loaded["onnx runtime"].access == "score"
    assert len(loaded["pt2"].info["sha256"]) == 64


def test_white_box_onnx_matches_the_original_under_pgd(
    trained_cnn: nn.Module, files: dict[str, Path], test_images: tuple[Tensor, Tensor]
) -> None:
    x, y = test_images[0][:100], test_images[1][:100]
    converted = load_external(str(files["onnx"]), probe=x).model
    attack = PGD(threat=ThreatModel(norm="linf", eps=0.1), steps=10)
    original = evaluate(trained_cnn, (x, y), [attack], seed=0)
    ours = evaluate(converted, (x, y), [attack], seed=0)
    assert ours.clean.correct == original.clean.correct
    differing = sum(a != b for a, b in zip(ours.robust_correct, original.robust_correct, strict=True))
    assert differing <= 1
    assert original.robust.value < original.clean.value


def test_onnx_conversion_is_refused_when_outputs_differ_or_ops_are_missing(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(files["onnx"])
    with monkeypatch.context() as patch:
        patch.setitem(
            onnx_convert.OPS, "Relu", lambda inputs, attrs: torch.nn.functional.leaky_relu(inputs[0], 0.2)
        )  # type: ignore[arg-type]
        with pytest.raises(ModelFileError, match=r"differs from onnxruntime.*--access score"):
            load_external(path)
    with monkeypatch.context() as patch:
        patch.delitem(onnx_convert.OPS, "Gemm")
        with pytest.raises(ModelFileError, match=r"cannot convert \(Gemm\)"):
            load_external(path)
        assert load_external(path, access="score").access == "score"  # the black box needs no conversion


def _rewrite(source: Path, target: Path, change: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            new.writestr(item, change.get(item.filename.split("/", 1)[1], old.read(item.filename)))
    return target


def test_pt2_that_could_run_code_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    source = files["pt2"]
    assert unsafe_parts(source.read_bytes()) == []
    with zipfile.ZipFile(source) as archive:
        names = {n.split("/", 1)[1]: n for n in archive.namelist()}
        weights = json.loads(archive.read(names["data/weights/model_weights_config.json"]))
        program = archive.read(names["models/model.json"]).decode()
    first = next(iter(weights["config"]))
    weights["config"][first]["use_pickle"] = True
    pickled = _rewrite(
        source,
        tmp_path / "pickled.pt2",
        {"data/weights/model_weights_config.json": json.dumps(weights).encode()},
    )
    with pytest.raises(ModelFileError, match=r"could run code.*pickled weight.*--trust-pickle"):
        load_external(str(pickled))
    hijacked = program.replace("torch.ops.aten.relu.default", "torch.os.system", 1)
    target = _rewrite(source, tmp_path / "target.pt2", {"models/model.json": hijacked.encode()})
    with pytest.raises(ModelFileError, match=r"graph target torch.os.system"):
        load_external(str(target))
    sympy = program.replace("Symbol('s", "__import__('os').system('s", 1)
    if sympy != program:
        expr = _rewrite(source, tmp_path / "expr.pt2", {"models/model.json": sympy.encode()})
        with pytest.raises(ModelFileError, match=r"symbolic expression"):
            load_external(str(expr))
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buffer)
    with pytest.raises(ModelFileError, match=r"not a .pt2 archive"):
        unsafe_parts(buffer.getvalue()[:50])


def test_factory_with_safetensors_weights_and_normalization(
    trained_cnn: nn.Module,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    test_images: tuple[Tensor, Tensor],
) -> None:
    x = test_images[0][:64]
    (tmp_path / "my_nets.py").write_text(
        "from advrobust.models import create_model\n\n"
        "def build_model(num_classes=10):\n"
        "    return create_model('small-cnn', num_classes=num_classes, in_channels=1).net\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    net = trained_cnn.net  # type: ignore[union-attr]
    weights = tmp_path / "net.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    external = load_external(
        "my_nets:build_model", weights=weights, mean=[0.1307], std=[0.3081], input_shape=(1, 28, 28)
    )
    assert external.access == "white-box" and external.num_classes == 10
    with torch.no_grad():
        assert torch.allclose(external.model(x), trained_cnn(x), atol=1e-5)
    with pytest.raises(ConfigError, match=r"--weights"):
        load_external("my_nets:build_model", input_shape=(1, 28, 28))
    pickle_file = tmp_path / "net.pt"
    pickle_file.write_bytes(b"not opened")
    with pytest.raises(ModelFileError, match=r"not a weights-only file"):
        load_external("my_nets:build_model", weights=pickle_file, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_pkg.nets'"):
        load_external("no_such_pkg.nets:build", weights=weights, input_shape=(1, 28, 28))
    sys.modules.pop("my_nets", None)


def test_timm_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import timm  # noqa: F401
    except Exception as exc:  # timm imports torchvision, which fails beside a torch it was not built for
        monkeypatch.setitem(sys.modules, "timm", None)
        with pytest.raises(ConfigError, match=r"advrobust\[timm\]"):
            build_timm("resnet18")
        pytest.skip(f"timm cannot be imported here ({type(exc).__name__}); the gate's error was checked")
    model = build_timm("resnet18", num_classes=10, in_channels=1)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_access_views(trained_cnn: nn.Module, test_images: tuple[Tensor, Tensor]) -> None:
    x = test_images[0][:8].clone().requires_grad_(True)
    scores = ScoreOnly(trained_cnn)(x)
    assert not scores.requires_grad
    hard = DecisionOnly(trained_cnn)(x)
    assert torch.equal(hard.argmax(dim=1), _predict(trained_cnn, x.detach()))
    assert set(hard.unique().tolist()) == {-1.0, 0.0}


def test_cli_eval_onnx(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(files["onnx"]), "--n", "40", "--attack", "fgsm", "--eps", "0.1",
                 "--json", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    meta = json.loads(out.read_text())["results"][0]["meta"]
    assert meta["access"] == "white-box" and meta["model"]["kind"] == "onnx"
    assert meta["model"]["parity"]["max_abs_diff"] < 1e-4
    out = tmp_path / "black.json"
    code = main(["eval", "--model", str(files["onnx"]), "--n", "20", "--access", "score", "--queries", "50",
                 "--eps", "0.3", "--json", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())["results"][0]
    assert [a["name"] for a in result["attacks"]] == ["square"]
    assert result["meta"]["access"] == "score" and result["meta"]["upper_bound"] is True
    assert main(["audit", "--model", str(files["onnx"]), "--access", "score", "--n", "10", "--quiet"]) == 2
