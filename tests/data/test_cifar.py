"""CIFAR-10: checksum before unpickling, a restricted unpickler, the folder and the archive layouts."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advrobust.data import cifar, load_dataset
from advrobust.data.cifar import decode_batch, restricted_loads
from advrobust.errors import ChecksumError, DataError


def _write_folder(root: Path, blobs: dict[str, bytes]) -> Path:
    folder = root / "cifar10" / cifar.FOLDER
    folder.mkdir(parents=True)
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return folder


def _tar_gz(blobs: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"{cifar.FOLDER}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buffer.getvalue()


def _expected(batches: dict[str, dict[str, Any]], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate([batches[n]["data"] for n in names])
    labels = np.concatenate([np.asarray(batches[n]["labels"]) for n in names])
    return rows, labels


def _check(data: Any, batches: dict[str, dict[str, Any]], names: list[str]) -> None:
    rows, labels = _expected(batches, names)
    assert data.images.dtype == torch.uint8 and data.images.shape == (len(rows), 3, 32, 32)
    assert data.images.is_contiguous() and data.labels.dtype == torch.int64
    # Row layout: 1024 red, then green, then blue, each row-major over 32 x 32.
    n, c, h, w = 1, 2, 5, 7
    assert int(data.images[n, c, h, w]) == int(rows[n, c * 1024 + h * 32 + w])
    np.testing.assert_array_equal(data.images.reshape(len(rows), -1).numpy(), rows)
    np.testing.assert_array_equal(data.labels.numpy(), labels)
    assert data.name == "cifar10" and data.num_classes == 10 and data.classes[0] == "airplane"


def test_extracted_folder(fake_cifar: dict[str, Any], tmp_path: Path) -> None:
    folder = _write_folder(tmp_path, fake_cifar["blobs"])
    train = load_dataset("cifar10", split="train", root=tmp_path)
    _check(train, fake_cifar["batches"], [f"data_batch_{i}" for i in range(1, 6)])
    test = load_dataset("cifar10", split="test", root=tmp_path)
    _check(test, fake_cifar["batches"], ["test_batch"])
    assert (
        test.source["root"] == str(folder)
        and test.source["test_batch"] == f"md5:{cifar.BATCH_MD5['test_batch']}"
    )


def test_archive(
    fake_cifar: dict[str, Any], helpers: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _tar_gz(fake_cifar["blobs"])
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", helpers.md5(archive))
    (tmp_path / cifar.ARCHIVE).write_bytes(archive)  # directly in the root
    _check(
        load_dataset("cifar10", split="train", root=tmp_path),
        fake_cifar["batches"],
        [f"data_batch_{i}" for i in range(1, 6)],
    )
    test = load_dataset("cifar10", root=tmp_path)
    _check(test, fake_cifar["batches"], ["test_batch"])
    assert test.source[cifar.ARCHIVE] == f"md5:{helpers.md5(archive)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [cifar.ARCHIVE]  # nothing extracted


def test_archive_with_wrong_checksum_is_refused(fake_cifar: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / cifar.ARCHIVE).write_bytes(_tar_gz(fake_cifar["blobs"]))
    with pytest.raises(ChecksumError, match=cifar.ARCHIVE_MD5):
        load_dataset("cifar10", root=tmp_path)


def test_archive_missing_member(
    fake_cifar: dict[str, Any], helpers: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = dict(fake_cifar["blobs"])
    del blobs["test_batch"]
    archive = _tar_gz(blobs)
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", helpers.md5(archive))
    (tmp_path / cifar.ARCHIVE).write_bytes(archive)
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path)


def test_download_archive(
    fake_cifar: dict[str, Any],
    helpers: SimpleNamespace,
    http_server: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = _tar_gz(fake_cifar["blobs"])
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", helpers.md5(archive))
    http_server.routes["/kriz/" + cifar.ARCHIVE] = [("ok", archive)]
    data = load_dataset("cifar10", root=tmp_path, download=True, mirror=http_server.url + "kriz/")
    _check(data, fake_cifar["batches"], ["test_batch"])
    assert (tmp_path / "cifar10" / cifar.ARCHIVE).read_bytes() == archive


def test_missing_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz.*download=True") as info:
        load_dataset("cifar10", root=tmp_path)
    assert str(tmp_path / "cifar10") in str(info.value)


def test_python2_pickles_as_in_the_official_files(helpers: SimpleNamespace) -> None:
    batch = helpers.cifar_batch(4, seed=7)
    blob = helpers.py2_pickle(batch)
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob and b"U\x04data" in blob  # as Python 2 wrote
    images, labels = decode_batch(blob, source="py2")
    np.testing.assert_array_equal(images.reshape(4, -1), batch["data"])
    np.testing.assert_array_equal(labels, batch["labels"])


def test_wrong_checksum_refused_before_unpickling(
    fake_cifar: dict[str, Any], helpers: SimpleNamespace, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    blobs = dict(fake_cifar["blobs"])
    blobs["test_batch"] = pickle.dumps(helpers.Evil(marker), protocol=2)
    _write_folder(tmp_path, blobs)
    with pytest.raises(ChecksumError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_restricted_unpickler_refuses_code_even_with_a_matching_checksum(
    fake_cifar: dict[str, Any], helpers: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = pickle.dumps(helpers.Evil(tmp_path / "code-ran"), protocol=2)
    # The payload is real: an ordinary unpickler runs it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(helpers.Evil(control), protocol=2))
    assert control.is_dir()
    blobs = dict(fake_cifar["blobs"])
    blobs["test_batch"] = evil
    monkeypatch.setitem(cifar.BATCH_MD5, "test_batch", helpers.md5(evil))
    _write_folder(tmp_path, blobs)
    with pytest.raises(DataError, match=r"refused") as info:
        load_dataset("cifar10", root=tmp_path)
    assert "makedirs" in str(info.value) and not isinstance(info.value, ChecksumError)
    assert not (tmp_path / "code-ran").exists()


class _Reduce:
    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)


@pytest.mark.parametrize(
    "payload",
    [
        _Reduce(eval, ("1 + 1",)),
        _Reduce(os.system, ("true",)),
        _Reduce(getattr, (np.ndarray, "tofile")),
        {"data": _Reduce(np.frombuffer, (b"\x00" * 3072, np.uint8))},
        {"data": np.zeros((1, 3072), dtype=np.uint8), "labels": [0], "extra": SimpleNamespace(a=1)},
    ],
    ids=["eval", "os.system", "getattr", "numpy.frombuffer", "nested-object"],
)
def test_restricted_loads_refuses_other_globals(payload: Any) -> None:
    blob = pickle.dumps(payload, protocol=4)
    with pytest.raises(DataError, match="refused"):
        restricted_loads(blob, source="evil")


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"not a pickle", "not a valid pickle"),
        (
            pickle.dumps({"data": np.zeros((1, 3072), dtype=np.uint8), "labels": [0]}, protocol=4)[:-5],
            "not a valid pickle",
        ),
        (pickle.dumps([1, 2, 3], protocol=4), "is a dict"),
        (
            pickle.dumps({"data": np.zeros((2, 3072), dtype=np.float32), "labels": [0, 1]}, protocol=4),
            "uint8",
        ),
        (pickle.dumps({"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]}, protocol=4), "3072"),
        (
            pickle.dumps({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0]}, protocol=4),
            "labels of shape",
        ),
        (
            pickle.dumps({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 10]}, protocol=4),
            "outside",
        ),
        (
            pickle.dumps({"data": np.zeros((1, 3072), dtype=np.uint8), "labels": ["a"]}, protocol=4),
            "integers",
        ),
    ],
)
def test_malformed_batches(blob: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        decode_batch(blob, source="batch")


def test_official_checksum_table() -> None:
    assert cifar.ARCHIVE_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar.BATCH_MD5 == {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    }


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_VALID = pickle.dumps(
    {"data": np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072).astype(np.uint8), "labels": [3, 7]},
    protocol=4,
)


@_FUZZ
@given(blob=st.binary(max_size=2048))
def test_random_bytes_raise_data_error(blob: bytes) -> None:
    with pytest.raises(DataError):
        decode_batch(blob, source="random")


@_FUZZ
@given(cut=st.integers(min_value=0, max_value=len(_VALID) - 1))
def test_every_truncation_of_a_batch_raises_data_error(cut: int) -> None:
    assert decode_batch(_VALID, source="whole")[0].shape == (2, 3, 32, 32)
    with pytest.raises(DataError):
        decode_batch(_VALID[:cut], source="truncated")


@_FUZZ
@given(position=st.integers(min_value=0, max_value=len(_VALID) - 1), byte=st.integers(0, 255))
def test_a_changed_byte_gives_data_error_or_a_valid_batch(position: int, byte: int) -> None:
    blob = bytearray(_VALID)
    blob[position] = byte
    try:
        images, labels = decode_batch(bytes(blob), source="flipped")
    except DataError:
        return
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)
    assert labels.shape == (images.shape[0],) and int(labels.min()) >= 0 and int(labels.max()) < 10
