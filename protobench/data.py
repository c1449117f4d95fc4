"""Datasets for the benchmark: every item is (image (3, S, S) normalized, label, index).

An image that does not decode comes back as None and the loader drops it (the caller
counts it), so one bad file never ends a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from protobench.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_image(path: str | os.PathLike, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Decode, convert to RGB whatever the mode, squash to size x size (bilinear), normalize."""
    with Image.open(path) as img:
        img = img.convert("RGB").resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    return normalize(x, mean, std)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(..., 3, H, W) pixels in 0..1 -> the model's normalized space."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - m) / s


class ImageFolder(torch.utils.data.Dataset):
    """DIR/<class>/<image>: classes are the sorted folder names, as torchvision's ImageFolder."""

    def __init__(self, root: str | os.PathLike, size: int, mean: Sequence[float], std: Sequence[float]):
        self.root = Path(root)
        if not self.root.exists():
            raise DataError(f"data directory not found: {self.root}")
        if not self.root.is_dir():
            raise DataError(f"--data must be a directory of class folders, got a file: {self.root}")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"no class folders in {self.root}: expected {self.root}/<class>/<image> (ImageFolder layout)")
        self.paths: list[str] = []
        self.labels: list[int] = []
        for label, name in enumerate(self.classes):
            for path in sorted((self.root / name).rglob("*")):
                if path.suffix.lower() in IMG_EXTENSIONS and path.is_file():
                    self.paths.append(str(path))
                    self.labels.append(label)
        if not self.paths:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) under the class folders of {self.root}")
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int]:
        try:
            x = load_image(self.paths[index], self.size, self.mean, self.std)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            x = None  # dropped by collate(); the runner records it as skipped
        return x, self.labels[index], index


class Subset(torch.utils.data.Dataset):
    """Some items of a dataset, which keep their original index (and so their random draws)."""

    def __init__(self, dataset: torch.utils.data.Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def random_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """A fixed-seed random choice of `limit` of n indices, in ascending order (all when limit is None)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=limit, replace=False))


def collate(items: list[tuple[torch.Tensor | None, int, int]]):
    """Stack the decodable items; return (x, y, index, indices of undecodable items)."""
    good = [it for it in items if it[0] is not None]
    skipped = [it[2] for it in items if it[0] is None]
    if not good:
        return None, None, None, skipped
    x = torch.stack([it[0] for it in good])
    y = torch.tensor([it[1] for it in good])
    idx = torch.tensor([it[2] for it in good])
    return x, y, idx, skipped
