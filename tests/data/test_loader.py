"""BatchLoader: exact float conversion per batch, every sample once, seeded shuffles, shards."""

from __future__ import annotations

import pytest
import torch

from advrobust.data import BatchLoader, ImageDataset
from advrobust.errors import ConfigError


def _dataset(n: int = 23) -> ImageDataset:
    images = torch.randint(
        0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    images[0].fill_(255)
    images[1].fill_(0)
    return ImageDataset(
        images=images, labels=torch.arange(n) % 5, num_classes=5, name="toy", classes=tuple("abcde")
    )


def _ids(loader: BatchLoader, data: ImageDataset) -> list[int]:
    """Sample positions in the order the loader gave them (each image is unique)."""
    flat = data.images.reshape(len(data), -1).float() / 255
    out: list[int] = []
    for x, _ in loader:
        x = x.cpu()
        match = (x.reshape(x.shape[0], 1, -1) == flat.unsqueeze(0)).all(dim=2)
        out.extend(match.float().argmax(dim=1).tolist())
    return out


def test_batches_are_exact_floats_in_order() -> None:
    data = _dataset()
    loader = BatchLoader(data, batch_size=5)
    batches = list(loader)
    assert len(loader) == len(batches) == 5 and [b[0].shape[0] for b in batches] == [5, 5, 5, 5, 3]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (23, 3, 4, 4) and x.min() == 0.0 and x.max() == 1.0
    assert torch.equal(x, data.images.float() / 255) and torch.equal(y, data.labels)
    assert data.images.dtype == torch.uint8  # the dataset itself stays uint8
    assert torch.equal(torch.cat([b[0] for b in loader]), x)  # re-iterable


def test_drop_last_and_len() -> None:
    data = _dataset(23)
    assert len(BatchLoader(data, batch_size=5, drop_last=True)) == 4
    assert [x.shape[0] for x, _ in BatchLoader(data, batch_size=5, drop_last=True)] == [5] * 4
    assert len(BatchLoader(data, batch_size=23)) == 1 and len(BatchLoader(data, batch_size=100)) == 1
    assert len(BatchLoader(data, batch_size=100, drop_last=True)) == 0


def test_shuffle_is_a_seeded_permutation() -> None:
    data = _dataset()
    order = _ids(
        BatchLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1)), data
    )
    assert sorted(order) == list(range(23)) and order != list(range(23))
    again = _ids(
        BatchLoader(data, batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(1)), data
    )
    assert again == order  # same seed, same order, whatever the batch size
    torch.manual_seed(123)  # the global RNG plays no part
    assert (
        _ids(BatchLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1)), data)
        == order
    )
    loader = BatchLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
    first, second = _ids(loader, data), _ids(loader, data)
    assert first == order and second != first and sorted(second) == list(range(23))  # a new order per pass
    pairs = list(BatchLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1)))
    ids = torch.tensor(order)
    assert torch.equal(torch.cat([y for _, y in pairs]), data.labels[ids])  # labels follow their images


def test_indices_give_shards() -> None:
    data = _dataset()
    shards = [torch.arange(rank, 23, 2) for rank in range(2)]
    seen = [_ids(BatchLoader(data, batch_size=4, indices=s), data) for s in shards]
    assert seen[0] == list(range(0, 23, 2)) and seen[1] == list(range(1, 23, 2))
    loader = BatchLoader(
        data, batch_size=4, indices=shards[1], shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    assert len(loader) == 3 and loader.num_samples == 11
    assert sorted(_ids(loader, data)) == list(range(1, 23, 2))
    assert _ids(BatchLoader(data, batch_size=2, indices=torch.tensor([5, 5, 0])), data) == [5, 5, 0]


def test_device_argument() -> None:
    x, y = next(iter(BatchLoader(_dataset(), batch_size=3, device="cpu")))
    assert x.device == torch.device("cpu") and y.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_and_generator() -> None:
    data = _dataset()
    make = lambda: BatchLoader(  # noqa: E731
        data,
        batch_size=4,
        shuffle=True,
        generator=torch.Generator(device="cuda").manual_seed(0),
        device="cuda",
    )
    x, y = next(iter(make()))
    assert x.device.type == "cuda" and y.device.type == "cuda" and x.dtype == torch.float32
    order = _ids(make(), data)
    assert sorted(order) == list(range(23)) and _ids(make(), data) == order


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"batch_size": 2, "indices": torch.tensor([0.0])}, "integer"),
        ({"batch_size": 2, "indices": torch.tensor([[0]])}, "1-D"),
        ({"batch_size": 2, "indices": torch.ones(23, dtype=torch.bool)}, "mask"),
        ({"batch_size": 2, "indices": torch.tensor([0, 23])}, r"\[0, 23\)"),
        ({"batch_size": 2, "indices": torch.tensor([-1])}, "positions"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BatchLoader(_dataset(), **kwargs)  # type: ignore[arg-type]
