"""Training data: the train split kept in memory when it fits, and each epoch's batches.

An epoch's order and each batch's random draws come from generators seeded by a hash of
(seed, plan step, batch index): independent streams, no shared state, so a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from protobench.errors import DataError, DataWarning

MEMORY_BUDGET = 2 << 30  # bytes of float32 images kept in memory; larger sets are decoded every epoch


def train_split(data: str, layout: str | None, split: str | None) -> str | None:
    """The split to train on: as given, else the layout's training split (None: it has no splits)."""
    from protobench.data.layouts import default_split

    return split if split is not None else default_split(data, layout, "train")


def in_memory(dataset: torch.utils.data.Dataset, budget: int = MEMORY_BUDGET) -> torch.utils.data.Dataset:
    """The dataset as a TensorDataset (x, y, dataset index) when its images fit in `budget`
    bytes (epochs then cost no decoding); otherwise the dataset, less what its headers show
    unusable. Images left out get a warning each that says why, as evaluate's skipped ones."""
    from protobench.data.imagelist import skip_reason

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
        return screened(dataset, skipped)
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


def screened(dataset: torch.utils.data.Dataset, skipped: list[int]) -> torch.utils.data.Dataset:
    """The dataset less `skipped` and the images whose header shows them unusable (over the pixel
    limit, not images...), each with a warning. Decoding every image to find the rest would cost an
    epoch: an image whose pixels turn out corrupt is dropped from its batch when training reads it."""
    from protobench.data.imagelist import Subset, Unusable, skip_reason

    check = getattr(dataset, "probe", None)
    bad = list(skipped)
    for i in range(len(skipped) + 1, len(dataset) if check else 0):  # skipped, then the first usable image
        try:
            check(i)
        except Unusable:
            bad.append(i)
    for i in bad:
        warnings.warn(f"skipped training image {skip_reason(dataset, i)}", DataWarning, stacklevel=3)
    if not bad:
        return dataset
    left_out = set(bad)
    return Subset(dataset, [i for i in range(len(dataset)) if i not in left_out])


def generator(seed: int, *keys: Any, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded by a hash of (seed, *keys): independent streams, no shared state."""
    digest = hashlib.sha256(json.dumps([seed, *keys]).encode()).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def epoch_order(seed: int, step: int, n: int, batch_size: int) -> list[torch.Tensor]:
    """Step `step`'s shuffled batches of positions 0..n-1; a last batch of one image is dropped
    (batch norm cannot train on it)."""
    order = torch.randperm(n, generator=generator(seed, "shuffle", step))
    parts = list(order.split(batch_size))
    return parts[:-1] if len(parts) > 1 and len(parts[-1]) == 1 else parts


def batches(data: torch.utils.data.Dataset, positions: list[torch.Tensor], device: torch.device,
            workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, dataset index) per batch of positions, on `device`: sliced from an in-memory
    TensorDataset, or decoded by a DataLoader (undecodable images dropped)."""
    if isinstance(data, torch.utils.data.TensorDataset):
        x, y, ids = data.tensors
        for idx in positions:
            yield x[idx].to(device), y[idx].to(device), ids[idx]
        return
    from protobench.data.imagelist import collate

    loader = torch.utils.data.DataLoader(data, batch_sampler=[p.tolist() for p in positions], collate_fn=collate,
                                         num_workers=workers)
    for x, y, ids, _ in loader:
        if x is not None:
            yield x.to(device), y.to(device), ids
