"""CUB-200-2011 from its archive layout, each image cropped to its bounding box (docs/datasets.md).

Conventions, from the archive's own README: `bounding_boxes.txt` lines are `<image_id> <x> <y>
<width> <height>`, pixels, with 1-based image ids shared by images.txt / image_class_labels.txt /
train_test_split.txt (`1` = training image); class ids are 1-based. Part keypoints (parts/) are read
only when a run asks for them (protobench.data.parts).
"""

from __future__ import annotations

import math
from pathlib import Path

from protobench.data.annotations import ID, check_image_folder, read_table, relative_name, short
from protobench.data.imagelist import ImageList
from protobench.data.layouts import LAYOUTS, Layout, Splits, marked_root
from protobench.data.parts import read_cub_parts
from protobench.errors import DataError

FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt")
SPLIT_FLAGS = {"test": ("0",), "train": ("1",), "all": ("0", "1")}  # is_training_image values in each split


class CubLayout(Layout):
    title = "CUB-200-2011"
    expects = "bounding_boxes.txt, images.txt, ... in DIR or DIR/CUB_200_2011/"
    order = 10

    def detect(self, data: str) -> Path | None:
        return marked_root(data, "bounding_boxes.txt", "CUB_200_2011")

    def splits(self, root: Path) -> Splits:
        return Splits(tuple(SPLIT_FLAGS), evaluate="test", train="train")

    def open(self, root: Path, split: str, info, max_pixels: int) -> ImageList:
        return open_cub(root, split, info.input_size, info.mean, info.std, max_pixels)


LAYOUT = CubLayout()
LAYOUTS.add("cub", LAYOUT)


def open_cub(root: Path, split: str, size: int, mean, std, max_pixels: int) -> ImageList:
    """The `split` ('test', 'train' or 'all') of the CUB archive at `root`."""
    images = read_table(root / "images.txt", 2, lambda where, cols: relative_name(cols[0], where, "images"))
    labels = read_table(root / "image_class_labels.txt", 2, _check_id)
    is_train = read_table(root / "train_test_split.txt", 2, _check_split)
    boxes = read_table(root / "bounding_boxes.txt", 5, _check_box)
    class_table = read_table(root / "classes.txt", 2)
    check_image_folder(root / "images")
    keep = SPLIT_FLAGS[split]
    ids = [i for i in sorted(images) if _field(root, is_train, i, "train_test_split.txt")[0] in keep]
    if not ids:
        raise DataError(f"{root}: no images in the {split} split (train_test_split.txt)")
    class_ids = sorted(class_table)
    position = {cid: k for k, cid in enumerate(class_ids)}
    paths = [str(root / "images" / images[i][0]) for i in ids]
    targets = [position[_class_id(root, labels, i, position)] for i in ids]
    xywh = [[float(v) for v in _field(root, boxes, i, "bounding_boxes.txt")] for i in ids]
    crops = [(x, y, x + w, y + h) for x, y, w, h in xywh]
    return ImageList(root, paths, targets, [class_table[c][0] for c in class_ids], size, mean, std, boxes=crops,
                     annotations=[str(root / name) for name in FILES], kind="cub", split=split,
                     max_pixels=max_pixels, parts=lambda: read_cub_parts(root, ids))


def _field(root: Path, table: dict[int, list[str]], image_id: int, name: str) -> list[str]:
    if image_id not in table:
        raise DataError(f"{root / name} has no line for image id {image_id} (listed in images.txt)")
    return table[image_id]


def _class_id(root: Path, labels: dict[int, list[str]], image_id: int, known: dict[int, int]) -> int:
    value = int(_field(root, labels, image_id, "image_class_labels.txt")[0])
    if value not in known:
        raise DataError(f"{root / 'image_class_labels.txt'}: image {image_id} has class {value}, "
                        "not an id in classes.txt")
    return value


def _check_id(where: str, cols: list[str]) -> None:
    if not ID.fullmatch(cols[0]):
        raise DataError(f"{where}: the class id {short(cols[0])} is not a whole number")


def _check_split(where: str, cols: list[str]) -> None:
    if cols[0] not in ("0", "1"):
        raise DataError(f"{where}: is_training_image must be 1 (train) or 0 (test), got {short(cols[0])}")


def _check_box(where: str, cols: list[str]) -> None:
    """x y width height: four finite numbers, width and height positive."""
    try:
        x, y, w, h = (float(v) for v in cols)
    except ValueError:
        raise DataError(f"{where}: the box {short(' '.join(cols))} is not four numbers (x y width height)") from None
    if not all(math.isfinite(v) for v in (x, y, w, h, x + w, y + h)):
        raise DataError(f"{where}: the box x y width height = {' '.join(cols)} is not finite")
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: the box x y width height = {' '.join(cols)} has a width or height <= 0")
