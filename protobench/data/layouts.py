"""Dataset layouts on disk -> ImageList: CUB-200-2011, Stanford Cars, ImageFolder.

`open_dataset(spec, info, kind=None, split=None)` is the one entry point: it detects the
layout of the directory `spec` (or takes `kind`), reads its annotations and returns an
ImageList whose items are cropped to the annotated bounding box where the layout has one.
Conventions, from each dataset's own README (see docs/datasets.md):

- CUB: `bounding_boxes.txt` lines are `<image_id> <x> <y> <width> <height>`, pixels, with
  1-based image ids shared by images.txt / image_class_labels.txt / train_test_split.txt
  (`1` = training image); class ids are 1-based.
- Cars: devkit `.mat` annotations hold bbox_x1, bbox_y1, bbox_x2, bbox_y2 (min and max
  pixel, MATLAB 1-based and inclusive), class (1-based) and fname.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from protobench.data.annotations import ID, read_table, relative_name, short
from protobench.data.imagelist import MAX_IMAGE_PIXELS, ImageFolder, ImageList
from protobench.errors import DataError

KINDS = ("cub", "cars", "imagefolder")
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt")
CARS_META = "devkit/cars_meta.mat"
CARS_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
CARS_SPLITS = {  # split -> (annotation files to try, in order; image folder)
    "test": (("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat"), "cars_test"),
    "train": (("devkit/cars_train_annos.mat",), "cars_train"),
}


def open_dataset(spec: str, info: Any, kind: str | None = None, split: str | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> ImageList:
    """The dataset at directory `spec` in the model's input format (info: ModelInfo).

    kind: 'cub', 'cars' or 'imagefolder' (None: detect). split: 'test' (default), 'train'
    or, for CUB, 'all'; ImageFolder has no splits. max_pixels: images larger than this are
    skipped unread (0: no limit).
    """
    root = Path(spec)
    if not root.exists():
        raise DataError(f"data directory not found: {root}")
    if kind is not None and kind not in KINDS:
        raise DataError(f"unknown --dataset {kind!r}: use {', '.join(KINDS)}")
    kind, root = (kind, _dataset_root(root, kind)) if kind else detect(root)
    args = (info.input_size, info.mean, info.std)
    if kind == "imagefolder":
        if split is not None:
            raise DataError("an ImageFolder has no splits: drop --split and point --data at the split's folder")
        return ImageFolder(root, *args, max_pixels=max_pixels)
    return READERS[kind](root, split or "test", *args, max_pixels=max_pixels)


def detect(root: Path) -> tuple[str, Path]:
    """(kind, dataset root): CUB or Cars when their annotation files are there (also one level
    down, as the archives unpack), else ImageFolder."""
    for kind in ("cub", "cars"):
        found = _find_root(root, kind)
        if found is not None:
            return kind, found
    return "imagefolder", root


def _find_root(root: Path, kind: str) -> Path | None:
    marker, subdir = {"cub": ("bounding_boxes.txt", "CUB_200_2011"), "cars": (CARS_META, "stanford_cars")}[kind]
    for candidate in (root, root / subdir):
        if (candidate / marker).is_file():
            return candidate
    return None


def _dataset_root(root: Path, kind: str) -> Path:
    if kind == "imagefolder":
        return root
    found = _find_root(root, kind)
    if found is None:
        expected = "bounding_boxes.txt, images.txt, ..." if kind == "cub" else CARS_META
        raise DataError(f"--dataset {kind}: {root} does not hold the {kind} layout (expected {expected}); "
                        "see docs/datasets.md")
    return found


def open_cub(root: Path, split: str, size: int, mean, std, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageList:
    """CUB-200-2011 from its archive layout, each image cropped to its bounding box."""
    if split not in ("test", "train", "all"):
        raise DataError(f"unknown --split {split!r} for CUB: use test, train or all")
    images = read_table(root / "images.txt", 2, lambda where, cols: relative_name(cols[0], where, "images"))
    labels = read_table(root / "image_class_labels.txt", 2, _check_id)
    is_train = read_table(root / "train_test_split.txt", 2, _check_split)
    boxes = read_table(root / "bounding_boxes.txt", 5, _check_box)
    class_table = read_table(root / "classes.txt", 2)
    _image_folder(root / "images")
    keep = {"test": ("0",), "train": ("1",), "all": ("0", "1")}[split]
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
                     annotations=[str(root / name) for name in CUB_FILES], kind="cub", split=split,
                     max_pixels=max_pixels)


def _image_folder(path: Path) -> None:
    """A missing image folder is one error, not one skipped-image warning per annotation."""
    if not path.is_dir():
        raise DataError(f"{path} is not a folder of images: is the dataset unpacked whole?")


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


def open_cars(root: Path, split: str, size: int, mean, std, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageList:
    """Stanford Cars from its devkit annotations, each image cropped to its bounding box."""
    from protobench.data.matfile import load_variable

    if split not in CARS_SPLITS:
        raise DataError(f"unknown --split {split!r} for Stanford Cars: use test or train")
    candidates, folder = CARS_SPLITS[split]
    annos_path = next((root / c for c in candidates if (root / c).is_file()), None)
    if annos_path is None:
        raise DataError(f"{root}: no {' or '.join(candidates)} for the {split} split (the test labels come as "
                        "cars_test_annos_withlabels.mat, distributed apart from the devkit)")
    _image_folder(root / folder)
    classes = list(np.atleast_1d(load_variable(root / CARS_META, "class_names")))  # squeezed: 1 name is a scalar
    if not classes or not all(isinstance(name, str) for name in classes):
        raise DataError(f"{root / CARS_META}: class_names must be a list of names (text)")
    records = np.atleast_1d(load_variable(annos_path, "annotations"))
    missing = [k for k in CARS_FIELDS if k not in (records.dtype.names or ())]
    if missing:
        raise DataError(f"{annos_path}: the annotations lack {', '.join(missing)}: is it the devkit's file?")
    if len(records) == 0:
        raise DataError(f"{annos_path} holds no annotations")
    rows = [_cars_row(record, f"{annos_path}, annotation {n}", folder, len(classes))
            for n, record in enumerate(records, 1)]
    return ImageList(root, [str(root / folder / fname) for fname, _, _ in rows], [label for _, label, _ in rows],
                     [str(name) for name in classes], size, mean, std, boxes=[box for _, _, box in rows],
                     annotations=[str(root / CARS_META), str(annos_path)], kind="cars", split=split,
                     max_pixels=max_pixels)


def _cars_row(record, where: str, folder: str, classes: int) -> tuple[str, int, tuple[float, ...]]:
    """(fname, 0-based label, 0-based half-open box) of one devkit annotation, checked."""
    fname = record["fname"]
    if not isinstance(fname, str) or not fname:
        raise DataError(f"{where}: fname is {_shown(fname)}, not a file name")
    relative_name(fname, f"{where} (fname)", folder)
    x1, y1, x2, y2, label = (_number(record[k], f"{where} ({fname}): {k}") for k in CARS_FIELDS[:5])
    if label != int(label) or not 1 <= label <= classes:
        raise DataError(f"{where} ({fname}): class {label:g} is not a whole number in 1..{classes}")
    if x2 < x1 or y2 < y1:
        raise DataError(f"{where} ({fname}): the box ({x1:g}, {y1:g})-({x2:g}, {y2:g}) ends before it starts")
    return fname, int(label) - 1, (x1 - 1, y1 - 1, x2, y2)  # 1-based inclusive -> 0-based, right/bottom exclusive


def _number(value, where: str) -> float:
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "iuf" or not np.isfinite(array):
        raise DataError(f"{where} is {_shown(value)}, not a finite number")
    return float(array)


def _shown(value) -> str:
    """A .mat value as a user would recognise it: the text quoted, a number, or an array's shape."""
    if isinstance(value, str):
        return short(value)
    array = np.asarray(value)
    return short(array.item()) if array.size == 1 else f"an array of shape {array.shape}"


READERS: dict[str, Callable[..., ImageList]] = {"cub": open_cub, "cars": open_cars}
