"""mnist-mini: the shipped file matches its provenance, is balanced, and rebuilds byte for byte."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from advrobust.data import bundled, load_dataset, mnist
from advrobust.data.bundled import build_mnist_mini, deterministic_npz, select_indices
from advrobust.errors import ChecksumError

BUNDLED = Path(str(resources.files("advrobust.data") / "bundled"))
REPO = Path(__file__).resolve().parents[2]


def _meta() -> dict[str, Any]:
    return json.loads((BUNDLED / "mnist-mini.json").read_text())


def test_shipped_npz_matches_its_json() -> None:
    meta = _meta()
    data = (BUNDLED / "mnist-mini.npz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == meta["npz_sha256"] and len(data) == meta["npz_bytes"]
    with np.load(BUNDLED / "mnist-mini.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(meta["arrays"])
        for split, per_class in (("train", 500), ("test", 100)):
            index = archive[f"index_{split}"]
            assert index.dtype == np.int64 and np.all(np.diff(index) > 0)  # sorted, no repeats
            assert index.min() >= 0 and index.max() < (60000 if split == "train" else 10000)
            assert (
                hashlib.sha256(index.astype("<i8").tobytes()).hexdigest()
                == meta["splits"][split]["index_sha256"]
            )
            counts = np.bincount(archive[f"y_{split}"], minlength=10)
            assert counts.tolist() == [per_class] * 10
            assert meta["splits"][split]["counts_per_class"] == {str(c): per_class for c in range(10)}
    assert meta["selection"]["seed"] == bundled.SEED and meta["selection"]["rule"] == bundled.SELECTION_RULE
    official = {f.filename: f for f in mnist.SOURCES["mnist"].train + mnist.SOURCES["mnist"].test}
    for name, record in meta["source"]["files"].items():
        assert (
            record["md5_official"] == official[name].md5 and record["md5_gunzipped"] == official[name].raw_md5
        )
    # No absolute path of the building machine leaks into the shipped provenance.
    assert not any(s.startswith("/") for s in _strings(meta))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize(("split", "count"), [("train", 5000), ("test", 1000)])
def test_load(split: str, count: int) -> None:
    data = load_dataset("mnist-mini", split=split)
    assert len(data) == count and data.images.shape == (count, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.images.is_contiguous() and data.labels.dtype == torch.int64
    assert torch.bincount(data.labels, minlength=10).tolist() == [count // 10] * 10
    assert data.name == "mnist-mini" and data.classes == tuple("0123456789") and data.num_classes == 10
    assert data.source["sha256"] == _meta()["npz_sha256"] and data.source["split"] == split
    # Real digits, not noise: mostly black background with a bright stroke.
    assert 0.10 < data.images.float().mean().item() / 255 < 0.16 and int(data.images.max()) == 255
    # Classes are interleaved, so take(n) gives every class.
    assert len(set(data.take(100).labels.tolist())) == 10


def test_tampered_npz_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "bundled"
    shutil.copytree(BUNDLED, copy)
    data = bytearray((copy / "mnist-mini.npz").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "mnist-mini.npz").write_bytes(bytes(data))
    monkeypatch.setattr(bundled.resources, "files", lambda package: tmp_path)
    with pytest.raises(ChecksumError, match=r"sha256.*reinstall advrobust"):
        load_dataset("mnist-mini")


def test_deterministic_npz_round_trips_and_repeats() -> None:
    arrays = {"a": np.arange(12, dtype=np.uint8).reshape(3, 4), "b": np.array([1, -2], dtype=np.int64)}
    blob = deterministic_npz(arrays)
    assert blob == deterministic_npz(dict(arrays))
    import io

    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        assert archive.files == ["a", "b"]
        np.testing.assert_array_equal(archive["a"], arrays["a"])
        np.testing.assert_array_equal(archive["b"], arrays["b"])


def test_selection_is_stratified_and_seeded() -> None:
    labels = (np.arange(300) % 10).astype(np.uint8)
    picked = select_indices(labels, split="train", per_class=7, seed=0)
    assert np.bincount(labels[picked], minlength=10).tolist() == [7] * 10 and np.all(np.diff(picked) > 0)
    assert np.array_equal(picked, select_indices(labels, split="train", per_class=7, seed=0))
    assert not np.array_equal(picked, select_indices(labels, split="train", per_class=7, seed=1))
    assert not np.array_equal(picked, select_indices(labels, split="test", per_class=7, seed=0))


def test_build_from_small_source_is_reproducible(
    fake_mnist: SimpleNamespace, helpers: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(bundled.PER_CLASS, "train", 2)
    monkeypatch.setitem(bundled.PER_CLASS, "test", 1)
    source = fake_mnist.write(tmp_path / "src")
    meta = build_mnist_mini(source, tmp_path / "a")
    build_mnist_mini(source, tmp_path / "b")
    for name in ("mnist-mini.npz", "mnist-mini.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    npz = (tmp_path / "a" / "mnist-mini.npz").read_bytes()
    assert meta["npz_sha256"] == hashlib.sha256(npz).hexdigest()
    assert json.loads((tmp_path / "a" / "mnist-mini.json").read_text()) == meta
    with np.load(tmp_path / "a" / "mnist-mini.npz") as archive:
        index = archive["index_train"]
        np.testing.assert_array_equal(archive["x_train"], fake_mnist.arrays["train-images"][index])
        np.testing.assert_array_equal(archive["y_train"], fake_mnist.arrays["train-labels"][index])
    assert meta["splits"]["test"]["count"] == 10
    # Sources that fail their checksum are refused before anything is written.
    images_spec = fake_mnist.spec.train[0]
    spec = dataclasses.replace(
        fake_mnist.spec,
        train=(dataclasses.replace(images_spec, md5="0" * 32, raw_md5="1" * 32), fake_mnist.spec.train[1]),
    )
    monkeypatch.setitem(mnist.SOURCES, "mnist", spec)
    with pytest.raises(ChecksumError):
        build_mnist_mini(source, tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_rebuild_from_real_mnist_is_byte_identical(real_mnist_dir: Path, tmp_path: Path) -> None:
    script = REPO / "scripts" / "build_mnist_mini.py"
    if not script.is_file():
        pytest.skip("scripts/build_mnist_mini.py is not beside the tests (installed package only)")
    subprocess.run(
        [sys.executable, str(script), "--source", str(real_mnist_dir), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("mnist-mini.npz", "mnist-mini.json"):
        assert (tmp_path / name).read_bytes() == (BUNDLED / name).read_bytes(), name
    # The bundled images are the real MNIST images at the recorded indices.
    with np.load(BUNDLED / "mnist-mini.npz", allow_pickle=False) as archive:
        for prefix, split in (("train", "train"), ("t10k", "test")):
            images = _read_real(real_mnist_dir / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
            labels = _read_real(real_mnist_dir / f"{prefix}-labels-idx1-ubyte.gz", 8)
            index = archive[f"index_{split}"]
            np.testing.assert_array_equal(archive[f"x_{split}"], images[index])
            np.testing.assert_array_equal(archive[f"y_{split}"], labels[index])


def _read_real(path: Path, offset: int) -> np.ndarray:
    """An independent reader (plain gzip + frombuffer) of a real IDX file."""
    return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8, offset=offset)
