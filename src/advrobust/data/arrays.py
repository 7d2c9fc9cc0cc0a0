"""Datasets from your own files: a .npz of arrays, or a folder with one sub-folder of images per class."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from advrobust.data.dataset import ImageDataset
from advrobust.errors import DataError
from advrobust.fileio import file_digest

Split = Literal["train", "test"]

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_CHANNELS = (1, 3)
_NPZ_HELP = "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) or np.savez(path, x=..., y=...)"


def images_to_nchw(x: npt.NDArray[np.generic], *, source: str) -> npt.NDArray[np.uint8]:
    """uint8 NCHW images from uint8 or [0, 1] float images laid out NHW, NCHW or NHWC.

    A 4-D array is NCHW when axis 1 has 1 or 3 entries, else NHWC when the last axis has.
    Shape: (N, H, W) | (N, C, H, W) | (N, H, W, C) -> (N, C, H, W), C in {1, 3}.
    """
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in _CHANNELS:
        if x.shape[3] not in _CHANNELS:
            raise DataError(
                f"{source}: images of shape {x.shape} have no axis of 1 or 3 channels; "
                "store them as (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3"
            )
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DataError(
            f"{source}: images must be 3-D (N, H, W) or 4-D (N, C, H, W) / (N, H, W, C), got shape {x.shape}; "
            "reshape them"
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{source}: images of dtype {x.dtype}; store uint8 in [0, 255] or floats in [0, 1]")
    if x.size and not bool(np.isfinite(x).all()):
        raise DataError(f"{source}: float images contain NaN or inf; replace them with values in [0, 1]")
    if x.size:
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise DataError(
                f"{source}: float images span [{low:g}, {high:g}], outside [0, 1]; "
                "scale them to [0, 1] (e.g. x / 255) or store uint8"
            )
    return np.ascontiguousarray(np.rint(x.astype(np.float64) * 255.0).astype(np.uint8))


def labels_to_int64(y: npt.NDArray[np.generic], n: int, *, source: str) -> npt.NDArray[np.int64]:
    """int64 class indices from any integer labels, checked against ``n`` images.

    Shape: (N,) -> (N,).
    """
    if y.ndim != 1:
        raise DataError(
            f"{source}: labels must be class indices of shape (N,), got {y.shape}; for one-hot labels save y.argmax(1)"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: labels of dtype {y.dtype}; store integer class indices")
    if y.shape[0] != n:
        raise DataError(f"{source}: {n} images but {y.shape[0]} labels; store one label per image")
    if y.size and int(y.min()) < 0:
        raise DataError(f"{source}: negative label {int(y.min())}; store class indices 0..K-1")
    return y.astype(np.int64)


def load_npz(path: Path, *, split: Split = "test") -> ImageDataset:
    """Load ``x_<split>``/``y_<split>`` (or ``x``/``y``) from a .npz; an optional ``classes`` array names them.

    Shape: images (N, C, H, W) uint8, labels (N,) int64.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz ({type(err).__name__}: {err}); {_NPZ_HELP}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not a .npz archive; {_NPZ_HELP}")
    with archive:
        keys = set(archive.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            x_key, y_key = f"x_{split}", f"y_{split}"
            label_keys = ["y_train", "y_test"]
        elif {"x", "y"} <= keys:
            x_key, y_key, label_keys = "x", "y", ["y"]
        else:
            raise DataError(f"{path}: arrays {sorted(keys)} lack x/y; {_NPZ_HELP}")
        try:
            x = archive[x_key]
            all_labels = {k: archive[k] for k in label_keys}
            names = archive["classes"] if "classes" in keys else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
            raise DataError(
                f"{path}: cannot read its arrays ({type(err).__name__}: {err}); {_NPZ_HELP}"
            ) from None
    source = f"{path}:{x_key}"
    images = images_to_nchw(x, source=source)
    labels = labels_to_int64(all_labels[y_key], images.shape[0], source=f"{path}:{y_key}")
    highest = max((int(v.max()) for v in all_labels.values() if v.size and v.ndim == 1), default=-1)
    classes = _class_names(names, highest + 1, source=f"{path}:classes")
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        num_classes=len(classes),
        name=f"npz:{path.name}",
        classes=classes,
        source={"file": str(path), "sha256": file_digest(path), "split": split if x_key != "x" else "all"},
    )


def _class_names(names: npt.NDArray[np.generic] | None, needed: int, *, source: str) -> tuple[str, ...]:
    if names is None:
        return tuple(str(k) for k in range(max(needed, 1)))
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(
            f"{source}: class names must be a 1-D string array; save np.array(['cat', 'dog', ...])"
        )
    if names.shape[0] < needed:
        raise DataError(
            f"{source}: {names.shape[0]} class names but labels up to {needed - 1}; name every class"
        )
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())


def load_image_folder(path: Path, *, split: Split = "test") -> ImageDataset:
    """Load ``path/<class>/<image>`` (or ``path/<split>/<class>/<image>`` when train/ or test/ exist).

    Class names are the sorted sub-folder names; every image must have the same size and mode, L or RGB.
    Shape: images (N, C, H, W) uint8 with C = 1 (L) or 3 (RGB), labels (N,) int64.
    """
    has_splits = (path / "train").is_dir() or (path / "test").is_dir()
    base = path / split if has_splits else path
    if has_splits and not base.is_dir():
        raise DataError(f"{path} has train/ or test/ but no {split}/; add {base} or load the other split")
    # With splits, classes come from both, so a label means the same class in train and test.
    class_roots = [path / s for s in ("train", "test") if (path / s).is_dir()] if has_splits else [path]
    classes = tuple(sorted({d.name for r in class_roots for d in r.iterdir() if _visible_dir(d)}))
    if not classes:
        raise DataError(
            f"{base} has no class sub-folders; put the images of each class in base/<class name>/"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = base / name
        if folder.is_dir():
            found = sorted(
                f
                for f in folder.iterdir()
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
            )
            files.extend(found)
            labels.extend([label] * len(found))
    if not files:
        raise DataError(f"{base} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); add some")
    images = _read_images(files)
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.tensor(labels, dtype=torch.int64),
        num_classes=len(classes),
        name=f"folder:{path.name}",
        classes=classes,
        source={"root": str(path), "split": split if has_splits else "all", "files": str(len(files))},
    )


def _visible_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _read_images(files: list[Path]) -> npt.NDArray[np.uint8]:
    """Every file decoded into one uint8 (N, C, H, W) array; all must share the first one's size and mode."""
    first, first_mode, first_size = _open(files[0])
    channels = 1 if first_mode == "L" else 3
    width, height = first_size
    out = np.empty((len(files), height, width, channels), dtype=np.uint8)
    out[0] = first.reshape(height, width, channels)
    for i, file in enumerate(files[1:], start=1):
        pixels, mode, size = _open(file)
        if mode != first_mode or size != first_size:
            raise DataError(
                f"{file} is {mode} {size[0]}x{size[1]} but {files[0]} is {first_mode} {width}x{height}; "
                "convert every image to one size and mode"
            )
        out[i] = pixels.reshape(height, width, channels)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _open(file: Path) -> tuple[npt.NDArray[np.uint8], str, tuple[int, int]]:
    try:
        with Image.open(file) as image:
            image.load()
            mode, size = image.mode, image.size
            if mode not in ("L", "RGB"):
                raise DataError(f"{file} has mode {mode}; convert every image to L (grey) or RGB")
            return np.asarray(image, dtype=np.uint8), mode, size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(
            f"{file}: not a readable image ({type(err).__name__}: {err}); fix or remove it"
        ) from None
