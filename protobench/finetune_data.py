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
    bytes (epochs then cost no decoding); the dataset itself otherwise. Images that cannot be
    used are left out with a warning each that says why, as evaluate does."""
    from protobench.data import skip_reason

    n = len(dataset)
    if n == 0:
        raise DataError("the training data holds no images")
    skipped: list[int] = []
    first = None
    for i in range(n):
        first = dataset[i]
        if first[0] is not None:
            break
        skipped.append(i)
    if first[0] is None:
        raise DataError(f"none of the {n} training images can be used (the first: {skip_reason(dataset, 0)})")
    x = first[0]
    if x.numel() * x.element_size() * n > budget:
        return dataset
    images = torch.empty((n, *x.shape), dtype=x.dtype)  # filled in place: no second copy from torch.stack
    labels, indices = [], []
    for i in range(len(skipped), n):
        x, y, index = first if i == len(skipped) else dataset[i]
        if x is None:
            skipped.append(i)
            continue
        images[len(indices)] = x
        labels.append(int(y))
        indices.append(int(index))
    for i in skipped:
        warnings.warn(f"skipped training image {skip_reason(dataset, i)}", DataWarning, stacklevel=2)
    return torch.utils.data.TensorDataset(images[:len(indices)], torch.tensor(labels), torch.tensor(indices))
