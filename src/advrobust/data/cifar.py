"""CIFAR-10 from the official python archive or its extracted folder: MD5 first, then a restricted unpickler."""

from __future__ import annotations

import importlib
import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from advrobust.data.dataset import ImageDataset
from advrobust.data.download import (
    HOW_TO_GET,
    check_md5,
    data_root,
    download_file,
    find_file,
    resolve_mirror,
    search_dirs,
)
from advrobust.errors import DataError

Split = Literal["train", "test"]

NAME = "cifar10"
MIRROR = "https://www.cs.toronto.edu/~kriz/"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# MD5s as published with the dataset (and used by torchvision). Read at call time, so tests can swap them.
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SPLITS: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_FIX = "delete it and download it again (download=True / --download), or check the path"


def load_cifar10(
    *,
    split: Split = "test",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    mirror: str | None = None,
) -> ImageDataset:
    """Load CIFAR-10 from ``<root>/cifar10/`` or ``<root>``: the extracted folder if present, else the archive.

    Shape: images (N, 3, 32, 32) uint8, labels (N,) int64; N = 50000 (train) or 10000 (test).
    """
    dirs = search_dirs(data_root(root), NAME)
    batches = SPLITS[split]
    folder = next((d / FOLDER for d in dirs if (d / FOLDER).is_dir()), None)
    source: dict[str, str] = {"split": split}
    if folder is not None:
        parts = [_batch_from_folder(folder, batch) for batch in batches]
        source["root"] = str(folder)
        source.update({batch: f"md5:{BATCH_MD5[batch]}" for batch in batches})
    else:
        archive = find_file(dirs, ARCHIVE)
        if archive is None and not download:
            raise DataError(
                f"cifar10: neither {ARCHIVE} nor {FOLDER}/ found (looked in {dirs[0]} and {dirs[1]}); {HOW_TO_GET}"
            )
        if archive is None:
            archive = dirs[0] / ARCHIVE
            download_file(resolve_mirror(mirror, MIRROR) + ARCHIVE, archive, ARCHIVE_MD5)
        check_md5(archive, ARCHIVE_MD5)
        parts = _batches_from_archive(archive, batches)
        source["root"] = str(archive.parent)
        source[ARCHIVE] = f"md5:{ARCHIVE_MD5}"
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels),
        num_classes=len(CLASSES),
        name=NAME,
        classes=CLASSES,
        source=source,
    )


def _batch_from_folder(folder: Path, batch: str) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    path = folder / batch
    if not path.is_file():
        raise DataError(f"{path} is missing; {HOW_TO_GET}")
    check_md5(path, BATCH_MD5[batch])  # before a single byte is unpickled
    return decode_batch(path.read_bytes(), source=str(path))


def _batches_from_archive(
    archive: Path, batches: tuple[str, ...]
) -> list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]]:
    # Members are read in memory, never extracted, so no path in the archive is ever written to.
    out = []
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for batch in batches:
                member = tar.getmember(f"{FOLDER}/{batch}")
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is None:
                    raise DataError(f"{archive}: {FOLDER}/{batch} is not a regular file; {_FIX}")
                out.append(decode_batch(handle.read(), source=f"{archive}:{FOLDER}/{batch}"))
    except KeyError as err:
        raise DataError(f"{archive}: no member {err}; {_FIX}") from None
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: not a readable tar.gz ({type(err).__name__}: {err}); {_FIX}") from None
    return out


def decode_batch(data: bytes, *, source: str) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Images and labels of one pickled CIFAR-10 batch, unpickled by ``restricted_loads``.

    Shape: images (N, 3, 32, 32) uint8, labels (N,) int64.
    """
    batch = restricted_loads(data, source=source)
    if not isinstance(batch, dict):
        raise DataError(f"{source}: a CIFAR batch is a dict, got {type(batch).__name__}; {_FIX}")
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    images, labels = entries.get("data"), entries.get("labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise DataError(f"{source}: 'data' is not a uint8 (N, 3072) array; {_FIX}")
    if images.shape[1] != 3 * 32 * 32:
        raise DataError(f"{source}: 'data' has rows of {images.shape[1]} bytes, expected 3072; {_FIX}")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{source}: 'labels' is not a list of integers; {_FIX}") from None
    if label_array.shape != (images.shape[0],):
        raise DataError(f"{source}: {images.shape[0]} images but labels of shape {label_array.shape}; {_FIX}")
    if label_array.size and (label_array.min() < 0 or label_array.max() >= len(CLASSES)):
        raise DataError(f"{source}: labels outside [0, {len(CLASSES)}); {_FIX}")
    # CIFAR rows are channel-major (1024 red, 1024 green, 1024 blue), so this is already NCHW.
    return images.reshape(-1, 3, 32, 32), label_array


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 renamed numpy.core to numpy._core; old pickles still name numpy.core
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")
    reconstruct = multiarray._reconstruct
    allowed: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for plain in (dict, list, bytes, str, int):
        allowed[("builtins", plain.__name__)] = plain
        allowed[("__builtin__", plain.__name__)] = plain  # Python 2 pickles, as CIFAR's are
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only plain containers and numpy array reconstruction."""

    def __init__(self, file: io.BytesIO, *, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise DataError(
                f"{self.source}: the pickle asks for {module}.{name}, which a CIFAR batch never needs, "
                f"so it is refused; {_FIX}"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"{self.source}: the pickle uses persistent ids, which a CIFAR batch never does; {_FIX}"
        )


def restricted_loads(data: bytes, *, source: str) -> Any:
    """Unpickle ``data`` allowing only dict, list, bytes, str, int and numpy arrays; else DataError."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except DataError:
        raise
    except Exception as err:  # any failure of a corrupt pickle, whatever its type
        raise DataError(f"{source}: not a valid pickle ({type(err).__name__}: {err}); {_FIX}") from None
