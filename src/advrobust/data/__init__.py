"""Datasets as uint8 tensors in memory, loaded from verified files, and float batches made on the fly."""

from __future__ import annotations

from advrobust.data.dataset import ImageDataset
from advrobust.data.loader import BatchLoader
from advrobust.data.registry import list_datasets, load_dataset

__all__ = ["BatchLoader", "ImageDataset", "list_datasets", "load_dataset"]
