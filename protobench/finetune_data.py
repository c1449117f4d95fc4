"""Training data for `protobench finetune`: the train split, kept in memory when it fits."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from protobench.errors import DataError, DataWarning

MEMORY_BUDGET = 2 << 30  # bytes of float32 images kept in memory; larger sets are decoded every epoch


def train_split(data: str, kind: str | None, split: str | None) -> str | None:
    """The split to train on: as given, else 'train' for CUB and Cars; None for an ImageFolder
    and for protoshapes (its split is in the name)."""
    from protobench.datasets import detect
    from protobench.demo import shapes

    if shapes.split_of(data) is not None:
        return None
    if split is not None:
        return split
    if kind is None and Path(data).is_dir():
        kind = detect(Path(data))[0]
    return "train" if kind in ("cub", "cars") else None


def in_memory(dataset: torch.utils.data.Dataset, budget: int = MEMORY_BUDGET) -> torch.utils.data.Dataset:
    """The dataset as a TensorDataset (x, y, dataset index) when its images fit in `budget`
    bytes (epochs then cost no decoding); the dataset itself otherwise."""
    if len(dataset) == 0:
        raise DataError("the training data holds no images")
    first = next((item[0] for item in (dataset[i] for i in range(len(dataset))) if item[0] is not None), None)
    if first is None:
        raise DataError("none of the training images could be decoded")
    if first.numel() * first.element_size() * len(dataset) > budget:
        return dataset
    items = [dataset[i] for i in range(len(dataset))]
    good = [item for item in items if item[0] is not None]
    if len(good) < len(items):
        warnings.warn(f"{len(items) - len(good)} training images do not decode and are left out", DataWarning,
                      stacklevel=2)
    return torch.utils.data.TensorDataset(torch.stack([item[0] for item in good]),
                                          torch.tensor([int(item[1]) for item in good]),
                                          torch.tensor([int(item[2]) for item in good]))
