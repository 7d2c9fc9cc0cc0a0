"""load_dataset: one entry point for the named datasets and for your own .npz files and image folders."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

from advrobust.data.arrays import load_image_folder, load_npz
from advrobust.data.bundled import load_mnist_mini
from advrobust.data.cifar import load_cifar10
from advrobust.data.dataset import ImageDataset
from advrobust.data.mnist import load_idx_dataset
from advrobust.errors import ConfigError

Split = Literal["train", "test"]
Loader = Callable[..., ImageDataset]

_LOADERS: dict[str, Loader] = {
    "cifar10": load_cifar10,
    "fashion-mnist": partial(load_idx_dataset, "fashion-mnist"),
    "mnist": partial(load_idx_dataset, "mnist"),
    "mnist-mini": lambda *, split, root, download, mirror: load_mnist_mini(split=split),
}


def list_datasets() -> list[str]:
    """The dataset names ``load_dataset`` knows, sorted (it also takes a .npz path or an image folder)."""
    return sorted(_LOADERS)


def load_dataset(
    name: str,
    *,
    split: Split = "test",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    mirror: str | None = None,
) -> ImageDataset:
    """Load a named dataset, a .npz file or an image folder (one sub-folder per class) as an ImageDataset.

    ``root`` (else ``$ADVROBUST_DATA``, else ``~/.cache/advrobust``) holds the named datasets' files;
    ``download`` fetches missing ones from ``mirror`` (else ``$ADVROBUST_MIRROR``, else the official
    site) and checks their MD5. mnist-mini is bundled and ignores both; so do paths.
    Shape: images (N, C, H, W) uint8, labels (N,) int64.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}; pass one of them")
    loader = _LOADERS.get(name)
    if loader is not None:
        return loader(split=split, root=root, download=download, mirror=mirror)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".npz":
        return load_npz(path, split=split)
    if path.is_dir():
        return load_image_folder(path, split=split)
    what = "is not a .npz file" if path.is_file() else "is neither a known dataset nor an existing path"
    raise ConfigError(
        f"dataset {name!r} {what}; use one of {', '.join(list_datasets())}, "
        "a path to a .npz file, or a folder with one sub-folder of images per class"
    )
