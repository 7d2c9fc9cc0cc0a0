"""ImageDataset: uint8 images and int64 labels in memory, with their provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from advrobust.errors import ConfigError, DataError


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images kept as uint8 in memory (4x smaller than float); loaders convert per batch.

    Shape: images (N, C, H, W) uint8 contiguous, labels (N,) int64 in [0, num_classes).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    classes: tuple[str, ...]
    source: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        where = f"dataset {self.name!r}"
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = (
                f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images)
            )
            raise DataError(
                f"{where}: images must be a uint8 tensor (N, C, H, W), got {got}; "
                "convert floats in [0, 1] with (x * 255).round().to(torch.uint8)"
            )
        if not images.is_contiguous():
            raise DataError(f"{where}: images must be contiguous; pass images.contiguous()")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            got = (
                f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels)
            )
            raise DataError(f"{where}: labels must be an int64 tensor (N,), got {got}; use labels.long()")
        if labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{where}: {images.shape[0]} images but {labels.shape[0]} labels; pass one label per image"
            )
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise DataError(
                f"{where}: num_classes must be a positive int, got {self.num_classes!r}; pass num_classes >= 1"
            )
        if len(self.classes) != self.num_classes:
            raise DataError(
                f"{where}: {len(self.classes)} class names for num_classes={self.num_classes}; "
                "give one name per class"
            )
        if labels.numel() > 0:
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise DataError(
                    f"{where}: labels span [{low}, {high}] outside [0, {self.num_classes}); "
                    "fix the labels or num_classes"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def subset(self, indices: torch.Tensor | slice) -> ImageDataset:
        """The samples at ``indices`` (int64 indices, a bool mask, or a slice), in that order."""
        if isinstance(indices, slice):
            images, labels = self.images[indices], self.labels[indices]
        else:
            if indices.dtype != torch.bool and (indices.is_floating_point() or indices.is_complex()):
                raise ConfigError(
                    f"subset indices must be integers or a bool mask, got {indices.dtype}; pass indices.long()"
                )
            index = indices.to(device=self.images.device)
            if index.dtype != torch.bool:
                index = index.long().reshape(-1)
            images, labels = self.images[index], self.labels[index]
        note = f"{int(images.shape[0])} of {len(self)} samples"
        source = dict(self.source)
        source["subset"] = f"{source['subset']}; {note}" if "subset" in source else note
        return ImageDataset(
            images=images.contiguous(),
            labels=labels.contiguous(),
            num_classes=self.num_classes,
            name=self.name,
            classes=self.classes,
            source=source,
        )

    def take(self, n: int) -> ImageDataset:
        """The first ``n`` samples (all of them when ``n >= len(self)``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"take(n) needs a non-negative int, got {n!r}; pass n >= 0")
        return self.subset(slice(0, n))
