"""Datasets for the benchmark: every item is (image (3, S, S) normalized, label, index).

An image protobench cannot use (it does not decode, is over the pixel limit, or its box
misses it: protobench.data.images) comes back as None and the loader drops it (the caller counts
it and asks `why_skipped` for the reason), so one bad file never ends a run. Dataset layouts
(CUB, Cars, ImageFolder, plugins) are registered in protobench.data.layouts, one module each;
those on disk end up as an ImageList.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from protobench.errors import DataError
from protobench.data.parts import CSV_NAME as PARTS_CSV
from protobench.data.images import (  # noqa: F401 - normalize, pixel_box: re-exported, others import them from here
    MAX_IMAGE_PIXELS, Box, Unusable, load_image, normalize, pixel_box, probe)

if TYPE_CHECKING:
    from protobench.data.parts import PartAnnotations

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageList(torch.utils.data.Dataset):
    """Images with labels (0-based) and optional crop boxes: what every dataset layout becomes.

    `files` lists every file the dataset depends on (images and annotations), for its fingerprint.
    `parts` reads the part keypoints (protobench.data.parts) when a run first asks for them.
    """

    def __init__(self, root: str | os.PathLike, paths: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                 size: int, mean: Sequence[float], std: Sequence[float], boxes: Sequence[Box] | None = None,
                 annotations: Sequence[str] = (), kind: str = "images", split: str | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS, parts: Callable[[], PartAnnotations] | None = None):
        self.root, self.kind, self.split = Path(root), kind, split
        self.parts = parts
        self.paths, self.labels, self.classes = list(paths), list(labels), list(classes)
        self.boxes = list(boxes) if boxes is not None else None
        self.files = [*self.paths, *annotations]
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.max_pixels = check_max_pixels(max_pixels)
        for path in self.paths:
            check_utf8(path)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int]:
        try:
            x = self.load(index)
        except Unusable:
            x = None  # dropped by collate(); the runner records it as skipped and asks why_skipped
        return x, self.labels[index], index

    def load(self, index: int) -> torch.Tensor:
        box = self.boxes[index] if self.boxes is not None else None
        return load_image(self.paths[index], self.size, self.mean, self.std, box, self.max_pixels)

    def probe(self, index: int) -> None:
        """Unusable if image `index`'s header already shows it cannot be used (no decoding)."""
        probe(self.paths[index], self.max_pixels)

    def part_locations(self, indices: Sequence[int]):
        """The part keypoints of images `indices` in the model's input (protobench.data.parts.locate);
        None when the dataset has no part annotations."""
        if self.parts is None:
            return None
        from protobench.data.parts import locate

        return locate(self.parts(), self.paths, self.boxes, indices, self.size, self.max_pixels)

    def why_skipped(self, index: int) -> str:
        """Why image `index` is unusable, found again (cheap: header checks come first); the
        reason is not carried from the decoding processes."""
        try:
            self.load(index)
        except Unusable as err:
            return str(err)
        return "the image did not decode, but did when read again (a file changing under the run?)"


class ImageFolder(ImageList):
    """DIR/<class>/<image>: classes are the sorted folder names, as torchvision's ImageFolder."""

    def __init__(self, root: str | os.PathLike, size: int, mean: Sequence[float], std: Sequence[float],
                 max_pixels: int = MAX_IMAGE_PIXELS):
        root = Path(root)
        if not root.exists():
            raise DataError(f"data directory not found: {root}")
        if not root.is_dir():
            raise DataError(f"--data must be a directory of class folders, got a file: {root}")
        try:
            classes = sorted(d.name for d in root.iterdir()
                             if d.is_dir() and not d.name.startswith(".") and d.name != PARTS_CSV)
            if not classes:
                raise DataError(f"no class folders in {root}: expected {root}/<class>/<image> (ImageFolder layout)")
            paths, labels = _image_files(root, classes)
        except OSError as err:  # a folder that cannot be listed
            raise DataError(f"cannot list {err.filename or root}: {err.strerror or err}") from None
        if not paths:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) under the class folders of {root}")
        super().__init__(root, paths, labels, classes, size, mean, std, kind="imagefolder", max_pixels=max_pixels,
                         parts=_parts_csv(root, paths) if os.path.lexists(root / PARTS_CSV) else None)  # a pipe or
        # a directory named parts.csv is an annotation file that cannot be read, said when parts are asked for


def _parts_csv(root: Path, paths: list[str]) -> Callable[[], PartAnnotations]:
    """Reads root/parts.csv when a run asks for part keypoints (docs/datasets.md, Part annotations)."""
    def read() -> PartAnnotations:
        from protobench.data.parts import read_parts_csv

        return read_parts_csv(root / PARTS_CSV, root, paths)

    return read


def _image_files(root: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """Every file with an image extension under each class folder (recursively, sorted), and its label."""
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMG_EXTENSIONS and path.is_file():
                paths.append(str(path))
                labels.append(label)
    return paths, labels


def check_max_pixels(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"--max-image-pixels must be 0 (no limit) or a positive number of pixels, got {value!r}")
    return value


def check_utf8(path: str) -> None:
    """A DataError for a file name that is not UTF-8 (Python holds its bytes as surrogates):
    the result files are UTF-8, and writing the name there would fail at the end of the run."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"the file name {os.fsencode(path)!r} is not UTF-8: rename it (e.g. with convmv) "
                        "so that results can name it") from None


def skip_reason(dataset, index: int) -> str:
    """`path: reason` for an item the loader dropped, for warnings and --strict errors."""
    why = getattr(dataset, "why_skipped", None)
    return f"{dataset.paths[index]}: {why(index) if why else 'the image does not decode'}"


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
