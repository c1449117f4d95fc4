"""Datasets for the benchmark: every item is (image (3, S, S) normalized, label, index).

An image that does not decode comes back as None and the loader drops it (the caller
counts it), so one bad file never ends a run. Dataset layouts (CUB, Cars, ImageFolder)
are read in protobench.datasets; all of them end up as an ImageList.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from protobench.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels, 0-based, right/bottom exclusive


def load_image(path: str | os.PathLike, size: int, mean: Sequence[float], std: Sequence[float],
               box: Box | None = None) -> torch.Tensor:
    """Decode, convert to RGB whatever the mode, crop to `box`, squash to size x size (bilinear), normalize."""
    with Image.open(path) as img:
        img = to_rgb(img)
        if box is not None:
            img = img.crop(pixel_box(box, img.size))
        img = img.resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    return normalize(x, mean, std)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB whatever the mode; 16-bit greyscale is scaled to 8 bits (PIL's own conversion clips it at 255)."""
    if img.mode in ("I", "I;16", "I;16L", "I;16B"):
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        img = Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def pixel_box(box: Box, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The whole pixels that a (possibly fractional) box touches, clamped to the image; never empty."""
    width, height = image_size
    left = min(max(math.floor(box[0]), 0), width - 1)
    top = min(max(math.floor(box[1]), 0), height - 1)
    right = max(min(math.ceil(box[2]), width), left + 1)
    bottom = max(min(math.ceil(box[3]), height), top + 1)
    return left, top, right, bottom


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(..., 3, H, W) pixels in 0..1 -> the model's normalized space."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - m) / s


class ImageList(torch.utils.data.Dataset):
    """Images with labels (0-based) and optional crop boxes: what every dataset layout becomes.

    `files` lists every file the dataset depends on (images and annotations), for its fingerprint.
    """

    def __init__(self, root: str | os.PathLike, paths: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                 size: int, mean: Sequence[float], std: Sequence[float], boxes: Sequence[Box] | None = None,
                 annotations: Sequence[str] = (), kind: str = "images", split: str | None = None):
        self.root, self.kind, self.split = Path(root), kind, split
        self.paths, self.labels, self.classes = list(paths), list(labels), list(classes)
        self.boxes = list(boxes) if boxes is not None else None
        self.files = [*self.paths, *annotations]
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int]:
        box = self.boxes[index] if self.boxes is not None else None
        try:
            x = load_image(self.paths[index], self.size, self.mean, self.std, box)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            x = None  # dropped by collate(); the runner records it as skipped
        return x, self.labels[index], index


class ImageFolder(ImageList):
    """DIR/<class>/<image>: classes are the sorted folder names, as torchvision's ImageFolder."""

    def __init__(self, root: str | os.PathLike, size: int, mean: Sequence[float], std: Sequence[float]):
        root = Path(root)
        if not root.exists():
            raise DataError(f"data directory not found: {root}")
        if not root.is_dir():
            raise DataError(f"--data must be a directory of class folders, got a file: {root}")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"no class folders in {root}: expected {root}/<class>/<image> (ImageFolder layout)")
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            for path in sorted((root / name).rglob("*")):
                if path.suffix.lower() in IMG_EXTENSIONS and path.is_file():
                    paths.append(str(path))
                    labels.append(label)
        if not paths:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) under the class folders of {root}")
        super().__init__(root, paths, labels, classes, size, mean, std, kind="imagefolder")


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
