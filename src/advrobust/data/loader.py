"""BatchLoader: batches of an ImageDataset as float32 in [0, 1], converted from uint8 one batch at a time."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from advrobust.data.dataset import ImageDataset
from advrobust.errors import ConfigError


class BatchLoader:
    """Re-iterable batches ``(x, y)`` on ``device``; each pass over a shuffled loader draws a new order.

    Shuffling draws only from ``generator`` (``torch.randperm``), so a seeded generator reproduces the
    order. ``indices`` restricts the loader to those samples (e.g. one rank's shard), in that order.
    Shape: x (B, C, H, W) float32 in [0, 1] (uint8 / 255), y (B,) int64.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        *,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        indices: Tensor | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}; pass batch_size >= 1")
        if indices is not None:
            indices = _check_indices(indices, len(dataset))
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else dataset.images.device
        self.indices = indices

    @property
    def num_samples(self) -> int:
        """How many samples one pass visits (before ``drop_last``)."""
        return len(self.dataset) if self.indices is None else int(self.indices.numel())

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        images, labels = self.dataset.images, self.dataset.labels
        for batch in range(len(self)):
            start = batch * self.batch_size
            stop = min(start + self.batch_size, self.num_samples)
            if order is None:
                x, y = images[start:stop], labels[start:stop]
            else:
                index = order[start:stop]
                x, y = images.index_select(0, index), labels.index_select(0, index)
            # Move as uint8 (4x fewer bytes) and convert on the device.
            x = x.to(self.device).to(torch.float32).div_(255.0)
            yield x, y.to(self.device)

    def _order(self) -> Tensor | None:
        # None means "0..N-1 in order", served by slicing instead of gathering.
        if not self.shuffle:
            return None if self.indices is None else self.indices.to(self.dataset.images.device)
        on = self.generator.device if self.generator is not None else torch.device("cpu")
        perm = torch.randperm(self.num_samples, generator=self.generator, device=on).cpu()
        order = perm if self.indices is None else self.indices.index_select(0, perm)
        return order.to(self.dataset.images.device)


def _check_indices(indices: Tensor, n: int) -> Tensor:
    if (
        not isinstance(indices, Tensor)
        or indices.dim() != 1
        or indices.is_floating_point()
        or indices.is_complex()
    ):
        raise ConfigError(
            "indices must be a 1-D integer tensor of sample positions; pass e.g. torch.arange(n)"
        )
    if indices.dtype == torch.bool:
        raise ConfigError("indices must be integer positions, not a mask; pass mask.nonzero().flatten()")
    indices = indices.to(device="cpu", dtype=torch.int64)
    if indices.numel() > 0:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= n:
            raise ConfigError(
                f"indices span [{low}, {high}] but the dataset has {n} samples; pass positions in [0, {n})"
            )
    return indices
