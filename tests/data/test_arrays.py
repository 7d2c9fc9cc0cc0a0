"""Your own data: .npz archives in any common layout, and folders of images, one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from advrobust.data import load_dataset
from advrobust.data.arrays import images_to_nchw, labels_to_int64
from advrobust.errors import DataError

RNG = np.random.default_rng(3)


def _save(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_npz_with_splits(tmp_path: Path) -> None:
    x_train = RNG.integers(0, 256, size=(6, 8, 9, 3), dtype=np.uint8)  # NHWC
    x_test = RNG.integers(0, 256, size=(4, 8, 9, 3), dtype=np.uint8)
    path = _save(
        tmp_path / "mine.npz",
        x_train=x_train,
        y_train=np.arange(6) % 3,
        x_test=x_test,
        y_test=np.array([0, 4, 1, 0]),
    )
    train, test = load_dataset(path, split="train"), load_dataset(path, split="test")
    np.testing.assert_array_equal(train.images.numpy(), x_train.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(test.images.numpy(), x_test.transpose(0, 3, 1, 2))
    assert test.labels.tolist() == [0, 4, 1, 0] and test.labels.dtype == torch.int64
    # Both splits get the same classes, from the labels of both.
    assert train.num_classes == test.num_classes == 5 and train.classes == ("0", "1", "2", "3", "4")
    assert test.name == "npz:mine.npz" and test.source["split"] == "test" and len(test.source["sha256"]) == 64
    assert test.images.is_contiguous() and test.input_shape == (3, 8, 9)


def test_npz_x_y_and_class_names(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(5, 1, 4, 4), dtype=np.uint8)  # NCHW
    path = _save(
        tmp_path / "a.npz",
        x=x,
        y=np.array([0, 1, 1, 0, 2], dtype=np.uint8),
        classes=np.array(["cat", "dog", "emu"]),
    )
    data = load_dataset(path, split="train")
    np.testing.assert_array_equal(data.images.numpy(), x)
    assert data.classes == ("cat", "dog", "emu") and data.source["split"] == "all"


def test_npz_float_images_are_scaled_exactly(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(3, 5, 5), dtype=np.uint8)
    path = _save(tmp_path / "f.npz", x=(x / 255.0).astype(np.float32), y=np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(load_dataset(path).images[:, 0].numpy(), x)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x": np.full((2, 4, 4), 1.5), "y": np.zeros(2, dtype=int)},
            r"span \[1\.5, 1\.5\], outside \[0, 1\]",
        ),
        ({"x": np.full((2, 4, 4), -0.1), "y": np.zeros(2, dtype=int)}, "outside"),
        ({"x": np.full((2, 4, 4), np.nan), "y": np.zeros(2, dtype=int)}, "NaN"),
        ({"x": np.zeros((2, 4, 4), dtype=np.int16), "y": np.zeros(2, dtype=int)}, "int16"),
        ({"x": np.zeros((2, 4, 4, 5), dtype=np.uint8), "y": np.zeros(2, dtype=int)}, "1 or 3 channels"),
        ({"x": np.zeros((2, 4), dtype=np.uint8), "y": np.zeros(2, dtype=int)}, "3-D"),
        ({"x": np.zeros((2, 4, 4), dtype=np.uint8), "y": np.zeros(3, dtype=int)}, "2 images but 3 labels"),
        ({"x": np.zeros((2, 4, 4), dtype=np.uint8), "y": np.zeros(2)}, "integer class indices"),
        ({"x": np.zeros((2, 4, 4), dtype=np.uint8), "y": np.eye(2, dtype=int)}, "one-hot"),
        ({"x": np.zeros((2, 4, 4), dtype=np.uint8), "y": np.array([0, -1])}, "negative"),
        ({"images": np.zeros((2, 4, 4), dtype=np.uint8)}, "lack x/y"),
        (
            {"x": np.zeros((2, 4, 4), dtype=np.uint8), "y": np.array([0, 3]), "classes": np.array(["a"])},
            "class names",
        ),
        ({"x": np.array([None, None], dtype=object), "y": np.zeros(2, dtype=int)}, "cannot read"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(str(tmp_path / "bad.npz"))
    assert "\n" not in str(info.value)


def test_npz_that_is_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"definitely not a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_dataset(str(tmp_path / "junk.npz"))


LAYOUTS = st.sampled_from(["NHW", "NCHW", "NHWC"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 4),
    h=st.integers(4, 7),
    w=st.integers(4, 7),
    channels=st.sampled_from([1, 3]),
    layout=LAYOUTS,
    dtype=st.sampled_from(["uint8", "float16", "float32", "float64"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_layout_and_dtype_gives_the_same_uint8_nchw(
    n: int, h: int, w: int, channels: int, layout: str, dtype: str, seed: int
) -> None:
    c = 1 if layout == "NHW" else channels
    expected = np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    stored = {"NHW": expected[:, 0], "NCHW": expected, "NHWC": expected.transpose(0, 2, 3, 1)}[layout]
    if dtype != "uint8":
        stored = (stored / 255.0).astype(dtype)
    out = images_to_nchw(stored, source="prop")
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]),
    values=st.lists(st.integers(0, 127), max_size=8),
)
def test_any_integer_labels_become_int64(dtype: str, values: list[int]) -> None:
    out = labels_to_int64(np.array(values, dtype=dtype), len(values), source="prop")
    assert out.dtype == np.int64 and out.tolist() == values


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


def test_image_folder_rgb(tmp_path: Path) -> None:
    pictures = RNG.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    layout = [("zebra", "b.png"), ("ant", "z.png"), ("zebra", "a.png"), ("bee", "x.bmp"), ("ant", "c.PNG")]
    for (cls, name), picture in zip(layout, pictures, strict=True):
        _png(tmp_path / "pics" / cls / name, picture)
    (tmp_path / "pics" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "pics" / ".hidden").mkdir()
    data = load_dataset(str(tmp_path / "pics"))
    assert data.classes == ("ant", "bee", "zebra") and data.num_classes == 3
    # Sorted by class, then by file name: ant/c.PNG, ant/z.png, bee/x.bmp, zebra/a.png, zebra/b.png.
    order = [4, 1, 3, 2, 0]
    np.testing.assert_array_equal(data.images.numpy(), pictures[order].transpose(0, 3, 1, 2))
    assert data.labels.tolist() == [0, 0, 1, 2, 2]
    assert data.name == "folder:pics" and data.source["split"] == "all" and data.source["files"] == "5"


def test_image_folder_with_splits_grey(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, size=(3, 5, 5), dtype=np.uint8)
    _png(tmp_path / "d" / "train" / "one" / "a.png", grey[0])
    _png(tmp_path / "d" / "train" / "two" / "a.png", grey[1])
    _png(tmp_path / "d" / "test" / "two" / "a.png", grey[2])  # test/ lacks "one": labels still agree
    train, test = (
        load_dataset(str(tmp_path / "d"), split="train"),
        load_dataset(str(tmp_path / "d"), split="test"),
    )
    assert train.classes == test.classes == ("one", "two")
    assert train.labels.tolist() == [0, 1] and test.labels.tolist() == [1]
    assert test.input_shape == (1, 5, 5)
    np.testing.assert_array_equal(test.images[0, 0].numpy(), grey[2])


def test_image_folder_missing_split(tmp_path: Path) -> None:
    _png(tmp_path / "d" / "train" / "one" / "a.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="no test/"):
        load_dataset(str(tmp_path / "d"), split="test")


@pytest.mark.parametrize("problem", ["size", "mode", "rgba", "corrupt", "empty", "no-classes"])
def test_image_folder_errors(tmp_path: Path, problem: str) -> None:
    root = tmp_path / "d"
    root.mkdir()
    if problem != "no-classes":
        (root / "a").mkdir()
    if problem not in ("empty", "no-classes"):
        _png(root / "a" / "1.png", np.zeros((4, 4, 3), dtype=np.uint8))
    if problem == "size":
        _png(root / "a" / "2.png", np.zeros((5, 4, 3), dtype=np.uint8))
    elif problem == "mode":
        _png(root / "a" / "2.png", np.zeros((4, 4), dtype=np.uint8))
    elif problem == "rgba":
        _png(root / "a" / "2.png", np.zeros((4, 4, 4), dtype=np.uint8))
    elif problem == "corrupt":
        (root / "a" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    message = {
        "size": "4x5 but .* 4x4; convert every image",
        "mode": "is L 4x4 but .* RGB",
        "rgba": "mode RGBA; convert every image to L",
        "corrupt": "2.png: not a readable image",
        "empty": "no image files",
        "no-classes": "no class sub-folders",
    }[problem]
    with pytest.raises(DataError, match=message):
        load_dataset(str(root))
