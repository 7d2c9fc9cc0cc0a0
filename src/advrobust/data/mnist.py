"""MNIST and Fashion-MNIST from the four official gzipped IDX files, verified by MD5, optionally downloaded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from advrobust.data.dataset import ImageDataset
from advrobust.data.download import (
    HOW_TO_GET,
    data_root,
    download_file,
    find_file,
    md5_hex,
    remember_verified,
    resolve_mirror,
    search_dirs,
    verified_digest,
)
from advrobust.data.idx import gunzip_idx, parse_idx, read_idx
from advrobust.errors import ChecksumError, DataError

Split = Literal["train", "test"]


@dataclass(frozen=True)
class IdxFile:
    """One official file: its name, the MD5 of the .gz and the MD5 of its decompressed content."""

    filename: str
    md5: str
    # Lets a re-compressed copy of the same data pass (gzip output depends on level and timestamp).
    raw_md5: str
    ndim: int


@dataclass(frozen=True)
class IdxSource:
    """An IDX dataset: where to download it, its class names, and its (images, labels) files per split."""

    name: str
    mirror: str
    classes: tuple[str, ...]
    train: tuple[IdxFile, IdxFile]
    test: tuple[IdxFile, IdxFile]


def _files(prefix: str, md5s: tuple[str, str], raw_md5s: tuple[str, str]) -> tuple[IdxFile, IdxFile]:
    return (
        IdxFile(f"{prefix}-images-idx3-ubyte.gz", md5s[0], raw_md5s[0], ndim=3),
        IdxFile(f"{prefix}-labels-idx1-ubyte.gz", md5s[1], raw_md5s[1], ndim=1),
    )


FASHION_CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")
FASHION_CLASSES += ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# MD5s as published with the datasets (and used by torchvision); the raw ones are of the gunzipped files.
SOURCES: dict[str, IdxSource] = {
    "mnist": IdxSource(
        name="mnist",
        mirror="https://ossci-datasets.s3.amazonaws.com/mnist/",
        classes=tuple(str(d) for d in range(10)),
        train=_files(
            "train",
            ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624"),
        ),
        test=_files(
            "t10k",
            ("9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
            ("2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
        ),
    ),
    "fashion-mnist": IdxSource(
        name="fashion-mnist",
        mirror="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        classes=FASHION_CLASSES,
        train=_files(
            "train",
            ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe"),
            ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9"),
        ),
        test=_files(
            "t10k",
            ("bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
            ("8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
        ),
    ),
}


def load_idx_dataset(
    name: str,
    *,
    split: Split = "test",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    mirror: str | None = None,
) -> ImageDataset:
    """Load ``mnist`` or ``fashion-mnist`` from ``<root>/<name>/`` or ``<root>``, downloading if asked.

    Shape: images (N, 1, 28, 28) uint8, labels (N,) int64; N = 60000 (train) or 10000 (test).
    """
    spec = SOURCES[name]
    dirs = search_dirs(data_root(root), name)
    wanted = spec.train if split == "train" else spec.test
    # A gunzipped copy (same name without .gz) is accepted too, checked against the content MD5.
    found = {f.filename: find_file(dirs, f.filename) or find_file(dirs, f.filename[:-3]) for f in wanted}
    missing = [f for f in wanted if found[f.filename] is None]
    if missing and not download:
        names = ", ".join(f.filename for f in missing)
        raise DataError(f"{name} {split}: missing {names} (looked in {dirs[0]} and {dirs[1]}); {HOW_TO_GET}")
    if missing:
        base = resolve_mirror(mirror, spec.mirror)
        for f in missing:
            download_file(base + f.filename, dirs[0] / f.filename, f.md5)
            found[f.filename] = dirs[0] / f.filename
    images_file, labels_file = wanted
    images_path, labels_path = found[images_file.filename], found[labels_file.filename]
    assert images_path is not None and labels_path is not None
    images, images_digest = read_verified_idx(images_path, images_file)
    labels, labels_digest = read_verified_idx(labels_path, labels_file)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels; "
            "delete both files and download them again, or check the path"
        )
    if labels.size and int(labels.max()) >= len(spec.classes):
        raise DataError(
            f"{labels_path}: label {int(labels.max())} is not below {len(spec.classes)}; "
            "delete the file and download it again, or check the path"
        )
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels).long(),
        num_classes=len(spec.classes),
        name=name,
        classes=spec.classes,
        source={
            "root": str(images_path.parent),
            "split": split,
            images_file.filename: images_digest,
            labels_file.filename: labels_digest,
        },
    )


def read_verified_idx(path: Path, spec: IdxFile) -> tuple[npt.NDArray[np.uint8], str]:
    """The array in ``path`` once its MD5 (or that of its content) matches ``spec``, and which matched."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err}); check the path and its permissions") from None
    official, content = f"md5:{spec.md5}", f"md5-gunzipped:{spec.raw_md5}"
    accepted = (official, content)
    matched = verified_digest(path, accepted)
    if path.suffix != ".gz":  # an already gunzipped copy
        got = spec.raw_md5 if matched is not None else md5_hex(data)
        if got != spec.raw_md5:
            raise ChecksumError(
                f"{path}: md5 {got} differs from the official {spec.raw_md5}; "
                "delete the file and download it again (download=True / --download)"
            )
        remember_verified(path, accepted, content)
        return parse_idx(data, source=str(path), ndim=spec.ndim), content
    if matched is not None:
        return read_idx(data, source=str(path), ndim=spec.ndim), matched
    got = md5_hex(data)
    if got == spec.md5:
        array = read_idx(data, source=str(path), ndim=spec.ndim)
        remember_verified(path, accepted, official)
        return array, official
    try:
        raw: bytes | None = gunzip_idx(data, source=str(path), ndim=spec.ndim)
    except DataError:
        raw = None
    if raw is None or md5_hex(raw) != spec.raw_md5:
        raise ChecksumError(
            f"{path}: md5 {got} differs from the official {spec.md5} (nor does its gunzipped content match "
            f"{spec.raw_md5}); delete the file and download it again (download=True / --download)"
        )
    remember_verified(path, accepted, content)
    return parse_idx(raw, source=str(path), ndim=spec.ndim), content
