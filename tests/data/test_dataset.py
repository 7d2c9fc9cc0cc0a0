"""ImageDataset: what it accepts, and subsets that keep everything but the samples."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from advrobust.data import ImageDataset
from advrobust.errors import ConfigError, DataError


def _dataset(n: int = 10, c: int = 1) -> ImageDataset:
    return ImageDataset(
        images=torch.arange(n * c * 4 * 5, dtype=torch.int64)
        .remainder(256)
        .to(torch.uint8)
        .reshape(n, c, 4, 5),
        labels=torch.arange(n) % 3,
        num_classes=3,
        name="toy",
        classes=("a", "b", "c"),
        source={"file": "toy.npz"},
    )


def test_basics() -> None:
    data = _dataset()
    assert len(data) == 10 and data.input_shape == (1, 4, 5)
    assert repr(data) == "ImageDataset(name='toy', n=10, input_shape=(1, 4, 5), num_classes=3)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.name = "other"  # type: ignore[misc]


def test_subset_by_indices_mask_and_slice() -> None:
    data = _dataset()
    picked = data.subset(torch.tensor([7, 2, 2]))
    assert torch.equal(picked.images, data.images[[7, 2, 2]]) and picked.labels.tolist() == [1, 2, 2]
    assert picked.source == {"file": "toy.npz", "subset": "3 of 10 samples"}
    assert (picked.name, picked.classes, picked.num_classes) == ("toy", ("a", "b", "c"), 3)
    masked = data.subset(data.labels == 0)
    assert masked.labels.tolist() == [0, 0, 0, 0] and torch.equal(masked.images, data.images[[0, 3, 6, 9]])
    stepped = data.subset(slice(1, None, 3))
    assert stepped.images.is_contiguous() and torch.equal(stepped.images, data.images[1::3])
    twice = picked.subset(torch.tensor([0]))
    assert twice.source["subset"] == "3 of 10 samples; 1 of 3 samples"
    assert data.source == {"file": "toy.npz"}  # the original is untouched


def test_take() -> None:
    data = _dataset()
    assert torch.equal(data.take(4).images, data.images[:4]) and len(data.take(100)) == 10
    assert len(data.take(0)) == 0
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="take"):
            data.take(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="integers"):
        data.subset(torch.tensor([0.5]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": torch.zeros(2, 1, 4, 4)}, "uint8"),
        ({"images": torch.zeros(2, 4, 4, dtype=torch.uint8)}, r"\(N, C, H, W\)"),
        ({"images": torch.zeros(2, 4, 4, 3, dtype=torch.uint8).permute(0, 3, 1, 2)}, "contiguous"),
        ({"labels": torch.zeros(2, dtype=torch.int32)}, "int64"),
        ({"labels": torch.zeros(3, dtype=torch.int64)}, "2 images but 3 labels"),
        ({"labels": torch.tensor([0, 3])}, r"\[0, 3\] outside \[0, 3\)"),
        ({"labels": torch.tensor([-1, 0])}, "outside"),
        ({"classes": ("a", "b")}, "2 class names for num_classes=3"),
        ({"num_classes": 0, "classes": ()}, "positive"),
    ],
)
def test_invalid_contents(change: dict[str, object], message: str) -> None:
    fields = {
        "images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
        "labels": torch.tensor([0, 1]),
        "num_classes": 3,
        "name": "bad",
        "classes": ("a", "b", "c"),
    }
    fields.update(change)
    with pytest.raises(DataError, match=message) as info:
        ImageDataset(**fields)  # type: ignore[arg-type]
    assert "bad" in str(info.value)
