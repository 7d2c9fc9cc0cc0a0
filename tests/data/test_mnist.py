"""MNIST / Fashion-MNIST from local IDX files: where they are found, checksums, strict contents."""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from advrobust.data import load_dataset, mnist
from advrobust.errors import ChecksumError, DataError


def _expect(dataset_images: torch.Tensor, array: np.ndarray) -> None:
    assert dataset_images.dtype == torch.uint8 and dataset_images.is_contiguous()
    assert tuple(dataset_images.shape) == (array.shape[0], 1, 28, 28)
    np.testing.assert_array_equal(dataset_images[:, 0].numpy(), array)


@pytest.mark.parametrize("split", ["train", "test"])
def test_loads_exact_contents(fake_mnist: SimpleNamespace, tmp_path: Path, split: str) -> None:
    fake_mnist.write(tmp_path / "mnist")
    data = load_dataset("mnist", split=split, root=tmp_path)
    prefix = "train" if split == "train" else "t10k"
    _expect(data.images, fake_mnist.arrays[f"{prefix}-images"])
    np.testing.assert_array_equal(data.labels.numpy(), fake_mnist.arrays[f"{prefix}-labels"])
    assert data.labels.dtype == torch.int64
    assert data.name == "mnist" and data.num_classes == 10 and data.classes == tuple("0123456789")
    assert data.source["root"] == str(tmp_path / "mnist") and data.source["split"] == split
    images_spec = fake_mnist.spec.train[0] if split == "train" else fake_mnist.spec.test[0]
    assert data.source[images_spec.filename] == f"md5:{images_spec.md5}"


def test_source_records_the_matching_checksum(fake_mnist: SimpleNamespace, tmp_path: Path) -> None:
    fake_mnist.write(tmp_path)
    data = load_dataset("mnist", root=tmp_path)
    images_spec, labels_spec = fake_mnist.spec.test
    assert data.source[images_spec.filename] == f"md5:{images_spec.md5}"
    assert data.source[labels_spec.filename] == f"md5:{labels_spec.md5}"


def test_files_directly_in_root_and_env_root(
    fake_mnist: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mnist.write(tmp_path)  # <root>/ itself, not <root>/mnist/
    monkeypatch.setenv("ADVROBUST_DATA", str(tmp_path))
    data = load_dataset("mnist", split="train")
    _expect(data.images, fake_mnist.arrays["train-images"])
    # An explicit root wins over the environment.
    monkeypatch.setenv("ADVROBUST_DATA", str(tmp_path / "nowhere"))
    assert len(load_dataset("mnist", split="train", root=tmp_path)) == 30


def test_default_root_is_the_user_cache(
    fake_mnist: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ADVROBUST_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    fake_mnist.write(tmp_path / ".cache" / "advrobust" / "mnist")
    assert len(load_dataset("mnist")) == 20


def test_missing_files_say_what_where_and_how(fake_mnist: SimpleNamespace, tmp_path: Path) -> None:
    fake_mnist.write(tmp_path / "mnist", names=["t10k-images-idx3-ubyte.gz"])
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and "t10k-images-idx3-ubyte.gz" not in message
    assert str(tmp_path / "mnist") in message and "download=True" in message and "ADVROBUST_DATA" in message
    assert "\n" not in message


def test_wrong_checksum_is_refused(fake_mnist: SimpleNamespace, tmp_path: Path) -> None:
    folder = fake_mnist.write(tmp_path / "mnist")
    labels = fake_mnist.arrays["t10k-labels"].copy()
    labels[0] = (labels[0] + 1) % 10  # valid IDX, different content
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01" + (20).to_bytes(4, "big") + labels.tobytes())
    )
    with pytest.raises(
        ChecksumError, match=r"t10k-labels-idx1-ubyte\.gz.*delete the file and download it again"
    ):
        load_dataset("mnist", root=tmp_path)


def test_recompressed_copy_passes_by_content(
    fake_mnist: SimpleNamespace, helpers: SimpleNamespace, tmp_path: Path
) -> None:
    folder = fake_mnist.write(tmp_path / "mnist")
    blob = helpers.idx_gz(fake_mnist.arrays["t10k-images"], level=1, mtime=12345)
    assert helpers.md5(blob) != fake_mnist.spec.test[0].md5
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(blob)
    data = load_dataset("mnist", root=tmp_path)
    _expect(data.images, fake_mnist.arrays["t10k-images"])
    assert data.source["t10k-images-idx3-ubyte.gz"] == f"md5-gunzipped:{fake_mnist.spec.test[0].raw_md5}"


def test_gunzipped_copies_are_accepted_by_content(fake_mnist: SimpleNamespace, tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, blob in fake_mnist.blobs.items():
        (folder / name.removesuffix(".gz")).write_bytes(gzip.decompress(blob))
    data = load_dataset("mnist", split="train", root=tmp_path)
    _expect(data.images, fake_mnist.arrays["train-images"])
    assert data.source["train-labels-idx1-ubyte.gz"] == f"md5-gunzipped:{fake_mnist.spec.train[1].raw_md5}"
    raw = folder / "train-labels-idx1-ubyte"
    raw.write_bytes(raw.read_bytes()[:-1] + b"\x00")  # the last label was 9
    os.utime(raw, ns=(1, 1))  # the cache keys on mtime, which a write in the same clock tick may not move
    with pytest.raises(ChecksumError, match="train-labels-idx1-ubyte: md5"):
        load_dataset("mnist", split="train", root=tmp_path)


def test_verification_is_cached_per_file_version(
    fake_mnist: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fake_mnist.write(tmp_path / "mnist")
    calls: list[int] = []
    real_md5 = mnist.md5_hex
    monkeypatch.setattr(mnist, "md5_hex", lambda data: calls.append(len(data)) or real_md5(data))
    load_dataset("mnist", root=tmp_path)
    assert len(calls) == 2  # images and labels
    load_dataset("mnist", root=tmp_path)
    assert len(calls) == 2  # nothing hashed again
    # Rewriting a file (new mtime) makes it be verified again, and caught.
    path = folder / "t10k-labels-idx1-ubyte.gz"
    corrupt = bytearray(path.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    os.utime(path, ns=(1, 1))
    with pytest.raises(ChecksumError):
        load_dataset("mnist", root=tmp_path)


def test_label_out_of_range_and_count_mismatch(
    fake_mnist: SimpleNamespace, helpers: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fake_mnist.write(tmp_path / "mnist")
    images_spec, labels_spec = fake_mnist.spec.test
    for labels, message in [
        (np.full(20, 10, dtype=np.uint8), "label 10 is not below 10"),
        (np.zeros(19, dtype=np.uint8), "20 images but .* 19 labels"),
    ]:
        blob = helpers.idx_gz(labels)
        (folder / labels_spec.filename).write_bytes(blob)
        accepting = dataclasses.replace(labels_spec, md5=helpers.md5(blob))
        spec = dataclasses.replace(fake_mnist.spec, test=(images_spec, accepting))
        monkeypatch.setitem(mnist.SOURCES, "mnist", spec)
        with pytest.raises(DataError, match=message):
            load_dataset("mnist", root=tmp_path)


def test_fashion_mnist_has_its_own_folder_and_classes(
    fake_mnist: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fashion = dataclasses.replace(
        fake_mnist.spec, name="fashion-mnist", classes=mnist.SOURCES["fashion-mnist"].classes
    )
    monkeypatch.setitem(mnist.SOURCES, "fashion-mnist", fashion)
    fake_mnist.write(tmp_path / "fashion-mnist")
    data = load_dataset("fashion-mnist", root=tmp_path)
    assert (
        data.name == "fashion-mnist" and data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    )
    assert data.source["root"] == str(tmp_path / "fashion-mnist")


def test_official_checksum_tables() -> None:
    """The published MD5s (torchvision's); a typo here would refuse every genuine download."""
    digits = mnist.SOURCES["mnist"]
    assert [f.md5 for f in digits.train + digits.test] == [
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ]
    fashion = mnist.SOURCES["fashion-mnist"]
    assert [f.md5 for f in fashion.train + fashion.test] == [
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ]
    for spec in (digits, fashion):
        assert [f.filename for f in spec.train + spec.test] == [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ]


@pytest.mark.slow
def test_real_mnist_full(real_mnist_dir: Path) -> None:
    train = load_dataset("mnist", split="train", root=real_mnist_dir.parent)
    test = load_dataset("mnist", split="test", root=real_mnist_dir)
    assert len(train) == 60000 and len(test) == 10000
    for data in (train, test):
        assert data.images.dtype == torch.uint8 and data.input_shape == (1, 28, 28)
        assert data.labels.dtype == torch.int64
    # The published class counts of MNIST.
    assert torch.bincount(train.labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(train.images.float().mean().item() / 255 - 0.1307) < 1e-3
