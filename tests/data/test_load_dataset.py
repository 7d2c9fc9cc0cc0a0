"""load_dataset: names, paths, and what it says for anything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import advrobust.data as data_package
from advrobust.data import list_datasets, load_dataset
from advrobust.errors import ConfigError, DataError


def test_public_names() -> None:
    assert data_package.__all__ == ["BatchLoader", "ImageDataset", "list_datasets", "load_dataset"]
    assert list_datasets() == ["cifar10", "fashion-mnist", "mnist", "mnist-mini"]


@pytest.mark.parametrize("name", ["imagenet", "MNIST", "missing/file.npz", ""])
def test_unknown_name_lists_the_known_ones(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    if name == "":
        name = str(tmp_path / "nothing-here")
    with pytest.raises(ConfigError) as info:
        load_dataset(name)
    message = str(info.value)
    assert all(known in message for known in list_datasets()) and ".npz" in message and "\n" not in message


def test_a_file_that_is_not_npz(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ConfigError, match=r"not a \.npz file"):
        load_dataset(str(tmp_path / "x.csv"))


def test_bad_split() -> None:
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        load_dataset("mnist-mini", split="validation")  # type: ignore[arg-type]


def test_paths_dispatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 3), dtype=np.uint8), y=np.array([0, 1]))
    assert load_dataset(str(tmp_path / "d.npz")).name == "npz:d.npz"
    assert load_dataset(tmp_path / "d.npz").name == "npz:d.npz"  # type: ignore[arg-type]
    with pytest.raises(DataError, match="class sub-folders"):
        load_dataset(str(tmp_path))  # a folder is read as an image folder


def test_mnist_mini_ignores_root_and_download(tmp_path: Path) -> None:
    assert len(load_dataset("mnist-mini", root=tmp_path / "none", download=True)) == 1000
