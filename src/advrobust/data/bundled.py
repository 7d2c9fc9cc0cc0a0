"""mnist-mini: 5,000 train and 1,000 test MNIST digits shipped in the package, and how they are rebuilt."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from advrobust.data.dataset import ImageDataset
from advrobust.data.download import remember_verified, verified_digest
from advrobust.data.mnist import SOURCES, read_verified_idx
from advrobust.errors import ChecksumError, DataError
from advrobust.fileio import atomic_write_bytes, atomic_write_json, file_digest

Split = Literal["train", "test"]

NAME = "mnist-mini"
NPZ_NAME = "mnist-mini.npz"
JSON_NAME = "mnist-mini.json"
SEED = 0
PER_CLASS: dict[str, int] = {"train": 500, "test": 100}
SELECTION_RULE = (
    "within each split (official train / t10k files) and each class, keep the per_class indices whose key is "
    "smallest, key = first 8 bytes, big-endian, of sha256(f'mnist-mini:{seed}:{split}:{index}'), ties by "
    "index; then sort the kept indices ascending"
)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so a rebuild is byte-identical
_REINSTALL = "reinstall advrobust, or rebuild it with scripts/build_mnist_mini.py"


def load_mnist_mini(*, split: Split = "test") -> ImageDataset:
    """The bundled mnist-mini split, after checking the npz's sha256 against its provenance JSON.

    Shape: images (N, 1, 28, 28) uint8, labels (N,) int64; N = 5000 (train) or 1000 (test).
    """
    folder = resources.files("advrobust.data") / "bundled"
    try:
        meta = json.loads((folder / JSON_NAME).read_text(encoding="utf-8"))
        expected = str(meta["npz_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"bundled {JSON_NAME} is missing or unreadable ({err}); {_REINSTALL}") from None
    with resources.as_file(folder / NPZ_NAME) as path:
        if not path.is_file():
            raise DataError(f"bundled {NPZ_NAME} is missing from the installed package; {_REINSTALL}")
        accepted = (f"sha256:{expected}",)
        if verified_digest(path, accepted) is None:
            got = file_digest(path, "sha256")
            if got != expected:
                raise ChecksumError(
                    f"bundled {path}: sha256 {got} differs from {expected} in {JSON_NAME}; {_REINSTALL}"
                )
            remember_verified(path, accepted, accepted[0])
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive[f"x_{split}"], archive[f"y_{split}"]
    count = PER_CLASS[split] * 10
    if images.shape != (count, 28, 28) or images.dtype != np.uint8 or labels.shape != (count,):
        raise DataError(
            f"bundled {NPZ_NAME}: x_{split} {images.shape} / y_{split} {labels.shape} are off; {_REINSTALL}"
        )
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=10,
        name=NAME,
        classes=tuple(str(d) for d in range(10)),
        source={"file": f"advrobust/data/bundled/{NPZ_NAME}", "sha256": expected, "split": split},
    )


def select_indices(
    labels: npt.NDArray[np.uint8], *, split: str, per_class: int, seed: int
) -> npt.NDArray[np.int64]:
    """The class-stratified selection described by ``SELECTION_RULE``, sorted ascending.

    Shape: labels (N,) -> (10 * per_class,).
    """
    digests = b"".join(
        hashlib.sha256(f"mnist-mini:{seed}:{split}:{i}".encode()).digest()[:8] for i in range(labels.shape[0])
    )
    keys = np.frombuffer(digests, dtype=">u8")
    kept = []
    for label in range(10):
        members = np.flatnonzero(labels == label)
        if members.shape[0] < per_class:
            raise DataError(
                f"{split}: only {members.shape[0]} samples of class {label}, {per_class} needed; use full MNIST"
            )
        kept.append(members[np.argsort(keys[members], kind="stable")[:per_class]])
    return np.sort(np.concatenate(kept)).astype(np.int64)


def deterministic_npz(arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    """A compressed .npz (what np.load reads) whose bytes depend only on ``arrays`` and their order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, mode="w") as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(value), version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buffer.getvalue()


def build_mnist_mini(source: Path, out: Path, *, seed: int = SEED) -> dict[str, Any]:
    """Write mnist-mini.npz and mnist-mini.json into ``out`` from the four MNIST files in ``source``.

    The MNIST files are MD5-verified first; the output is byte-identical for the same inputs and seed.
    """
    spec = SOURCES["mnist"]
    arrays: dict[str, npt.NDArray[Any]] = {}
    files: dict[str, dict[str, str]] = {}
    splits: dict[str, dict[str, Any]] = {}
    for split, (images_file, labels_file) in (("train", spec.train), ("test", spec.test)):
        loaded = []
        for idx_file in (images_file, labels_file):
            path = source / idx_file.filename
            if not path.is_file():
                raise DataError(
                    f"{path} is missing; point --source at the folder with the four MNIST .gz files"
                )
            array, matched = read_verified_idx(path, idx_file)
            loaded.append(array)
            files[idx_file.filename] = {
                "md5": file_digest(path, "md5"),
                "md5_official": idx_file.md5,
                "md5_gunzipped": idx_file.raw_md5,
                "verified_as": matched,
            }
        images, labels = loaded
        index = select_indices(labels, split=split, per_class=PER_CLASS[split], seed=seed)
        arrays[f"x_{split}"] = images[index]
        arrays[f"y_{split}"] = labels[index]
        arrays[f"index_{split}"] = index
        splits[split] = {
            "count": int(index.shape[0]),
            "counts_per_class": {
                str(c): int(n) for c, n in enumerate(np.bincount(labels[index], minlength=10))
            },
            "drawn_from": [images_file.filename, labels_file.filename],
            "index_sha256": hashlib.sha256(index.astype("<i8").tobytes()).hexdigest(),
        }
    data = deterministic_npz(arrays)
    meta: dict[str, Any] = {
        "name": NAME,
        "npz": NPZ_NAME,
        "npz_sha256": hashlib.sha256(data).hexdigest(),
        "npz_bytes": len(data),
        "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()},
        "index_sha256_of": "the index_<split> array as little-endian int64 bytes",
        "selection": {"rule": SELECTION_RULE, "seed": seed, "per_class": PER_CLASS},
        "source": {"dataset": "MNIST (LeCun, Cortes and Burges)", "files": files},
        "splits": splits,
        "builder": "scripts/build_mnist_mini.py",
    }
    atomic_write_bytes(out / NPZ_NAME, data)
    atomic_write_json(out / JSON_NAME, meta)
    return meta
