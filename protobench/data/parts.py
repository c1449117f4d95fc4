"""Object-part keypoints, for consistency and stability (docs/datasets.md, Part annotations).

Three sources: CUB-200-2011's `parts/parts.txt` and `parts/part_locs.txt` (the official archive
layout); `parts.csv` beside an ImageFolder's class folders (`image,part,x,y,visible`); ProtoShapes,
which knows where it drew each part (protobench.demo.shapes).

Keypoints are pixel coordinates in the image as displayed (after its EXIF orientation). They follow
the image's crop and squash to the model's input: a keypoint (x, y) in the crop (left, top, right,
bottom) lands at u = int(S * ((x - left) / (right - left))), v = int(S * ((y - top) / (bottom - top))),
truncated toward zero, in the float order of Huang et al.'s reference code (the fraction first, then
times S), which maps CUB's keypoints into its cropped test images this way (docs/metrics.md, Consistency and stability).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from protobench.data.annotations import ID, annotation_text, read_table, short
from protobench.errors import DataError

CSV_HEADER = ["image", "part", "x", "y", "visible"]
CSV_NAME = "parts.csv"


@dataclass(frozen=True)
class PartAnnotations:
    """Keypoints of every image of a dataset, in its own pixels."""

    names: tuple[str, ...]  # K part names, in the annotation's order
    xy: np.ndarray  # (N, K, 2) float64 x (column), y (row) in the image as displayed
    visible: np.ndarray  # (N, K) bool
    files: tuple[str, ...]  # the annotation files read (recorded with the run)


@dataclass(frozen=True)
class PartLocations:
    """Keypoints in the model's input, what the part pass reads (protobench.core.parts.part_hits)."""

    names: tuple[str, ...]
    table: np.ndarray  # (N, K, 3) int64: u (column), v (row) in the S x S input, visible 0/1
    files: tuple[str, ...]


def to_input(xy: np.ndarray, visible: np.ndarray, crops: np.ndarray, size: int) -> np.ndarray:
    """(n, K, 2) keypoints, (n, K) visibility and (n, 4) crops (left, top, right, bottom; NaN for an
    image that cannot be read) -> (n, K, 3) int64 u, v, visible in the size x size input."""
    left, top, right, bottom = (crops[:, i, None] for i in range(4))
    far = float(1 << 40)  # a keypoint this far outside the input stays outside; 1e300 px would not fit int64
    with np.errstate(invalid="ignore", over="ignore"):  # the reference's order: divide, then scale
        u = np.clip(np.trunc(size * ((xy[..., 0] - left) / (right - left))), -far, far)
        v = np.clip(np.trunc(size * ((xy[..., 1] - top) / (bottom - top))), -far, far)
    shown = visible & np.isfinite(u) & np.isfinite(v)
    out = np.zeros((*visible.shape, 3), dtype=np.int64)
    out[..., 0], out[..., 1] = np.where(shown, u, 0), np.where(shown, v, 0)
    out[..., 2] = shown
    return out


def locate(parts: PartAnnotations, paths: Sequence[str], boxes, indices: Sequence[int], size: int,
           max_pixels: int) -> PartLocations:
    """The keypoints of images `indices` in the model's input (other rows: not visible). Each image's
    crop is the one its pixels get (protobench.data.images.pixel_box), so its header is read for its
    size; an image that cannot be read has no visible part (the run skips it anyway)."""
    from protobench.data.images import Unusable, displayed_size, pixel_box

    crops = np.full((len(paths), 4), np.nan)
    for i in indices:
        try:
            width, height = displayed_size(paths[i], max_pixels)
            crops[i] = pixel_box(boxes[i], (width, height)) if boxes is not None else (0, 0, width, height)
        except Unusable:
            continue
    chosen = np.zeros(len(paths), dtype=bool)
    chosen[list(indices)] = True
    table = to_input(parts.xy, parts.visible & chosen[:, None], crops, size)
    return PartLocations(parts.names, table, parts.files)


def read_cub_parts(root: Path, image_ids: Sequence[int]) -> PartAnnotations:
    """CUB's parts/parts.txt (`<part_id> <name>`, ids 1..K) and parts/part_locs.txt (`<image_id>
    <part_id> <x> <y> <visible>`) for the images `image_ids`, in that order. Coordinates are truncated
    to whole pixels first, as the reference code reads them (docs/metrics.md)."""
    names_path, locs_path = root / "parts" / "parts.txt", root / "parts" / "part_locs.txt"
    table = read_table(names_path, 2)
    if sorted(table) != list(range(1, len(table) + 1)):
        raise DataError(f"{names_path}: part ids must be 1, 2, ... {max(len(table), 1)} with none missing")
    row = {image_id: n for n, image_id in enumerate(image_ids)}
    xy, visible = np.zeros((len(image_ids), len(table), 2)), np.zeros((len(image_ids), len(table)), dtype=bool)
    seen: dict[tuple[int, int], int] = {}
    for number, line in enumerate(annotation_text(locs_path).split("\n"), 1):
        if not line.strip():
            continue
        image_id, part, x, y, shown = _cub_line(line, f"{locs_path}:{number}", len(table))
        if (image_id, part) in seen:
            raise DataError(f"{locs_path}:{number}: image {image_id}, part {part} is listed twice "
                            f"(first on line {seen[image_id, part]})")
        seen[image_id, part] = number
        if image_id in row and shown:
            xy[row[image_id], part - 1] = math.trunc(x), math.trunc(y)
            visible[row[image_id], part - 1] = True
    return PartAnnotations(tuple(table[k][0] for k in sorted(table)), xy, visible,
                           (str(names_path), str(locs_path)))


def _cub_line(line: str, where: str, parts: int) -> tuple[int, int, float, float, bool]:
    cols = line.split()
    if len(cols) != 5 or not (ID.fullmatch(cols[0]) and ID.fullmatch(cols[1])) or cols[4] not in ("0", "1"):
        raise DataError(f"{where}: expected <image_id> <part_id> <x> <y> <visible 0 or 1>, got {short(line)}")
    if not 1 <= int(cols[1]) <= parts:
        raise DataError(f"{where}: part id {cols[1]} is not in parts.txt (1..{parts})")
    return int(cols[0]), int(cols[1]), _coordinate(cols[2], where), _coordinate(cols[3], where), cols[4] == "1"


def _coordinate(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: the coordinate {short(text)} is not a finite number of pixels")
    return value


def read_parts_csv(path: Path, root: Path, paths: Sequence[str]) -> PartAnnotations:
    """`image,part,x,y,visible` lines: image relative to `root` with '/' separators, one of the dataset's
    images; part a name (the order of first appearance); x, y in pixels of the image as displayed;
    visible 1 or 0 (x and y may be empty when 0). An image with no line has no visible part."""
    rows = list(csv.reader(annotation_text(path).splitlines()))
    if not rows or [c.strip() for c in rows[0]] != CSV_HEADER:
        raise DataError(f"{path}: the first line must be the header {','.join(CSV_HEADER)}")
    row_of = {os.path.relpath(p, root).replace(os.sep, "/"): n for n, p in enumerate(paths)}
    names: dict[str, int] = {}
    found: dict[tuple[int, int], tuple[float, float, int]] = {}
    for number, cols in enumerate(rows[1:], 2):
        where = f"{path}:{number}"
        if not cols:
            continue
        image, part, x, y, shown = _csv_line(cols, where)
        image = str(PurePosixPath(image.replace("\\", "/")))  # ./a/b.png and backslashes name a/b.png too
        if image not in row_of:
            raise DataError(f"{where}: {short(image)} is not an image of {root} (give its path relative to "
                            f"{root}, e.g. <class>/<file>)")
        key = (row_of[image], names.setdefault(part, len(names)))
        if key in found:
            raise DataError(f"{where}: image {short(image)}, part {short(part)} is listed twice "
                            f"(first on line {found[key][2]})")
        found[key] = (x, y, number) if shown else (math.nan, math.nan, number)
    if not names:
        raise DataError(f"{path} lists no part: add lines image,part,x,y,visible")
    xy, visible = np.zeros((len(paths), len(names), 2)), np.zeros((len(paths), len(names)), dtype=bool)
    for (n, k), (x, y, _) in found.items():
        if math.isfinite(x):
            xy[n, k], visible[n, k] = (x, y), True
    return PartAnnotations(tuple(names), xy, visible, (str(path),))


def _csv_line(cols: list[str], where: str) -> tuple[str, str, float, float, bool]:
    cols = [c.strip() for c in cols]
    if len(cols) != 5 or not cols[0] or not cols[1] or cols[4] not in ("0", "1"):
        raise DataError(f"{where}: expected image,part,x,y,visible (visible 1 or 0), got {short(','.join(cols))}")
    if cols[4] == "0":
        return cols[0], cols[1], math.nan, math.nan, False
    return cols[0], cols[1], _coordinate(cols[2], where), _coordinate(cols[3], where), True
