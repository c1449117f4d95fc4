"""Stanford Cars from its devkit annotations, each image cropped to its bounding box (docs/datasets.md).

The devkit's `.mat` annotations hold bbox_x1, bbox_y1, bbox_x2, bbox_y2 (min and max pixel,
MATLAB 1-based and inclusive), class (1-based) and fname; the test labels come apart from
the devkit, as cars_test_annos_withlabels.mat (at the root, as torchvision's StanfordCars
wants it, or in devkit/).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protobench.data.annotations import check_image_folder, relative_name, short
from protobench.data.imagelist import ImageList
from protobench.data.layouts import LAYOUTS, Layout, Splits, marked_root
from protobench.errors import DataError

META = "devkit/cars_meta.mat"
FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
SPLITS = {  # split -> (annotation files to try, in order; image folder)
    "test": (("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat"), "cars_test"),
    "train": (("devkit/cars_train_annos.mat",), "cars_train"),
}


class CarsLayout(Layout):
    title = "Stanford Cars"
    expects = f"{META} in DIR or DIR/stanford_cars/"
    order = 20

    def detect(self, data: str) -> Path | None:
        return marked_root(data, META, "stanford_cars")

    def splits(self, root: Path) -> Splits:
        return Splits(tuple(SPLITS), evaluate="test", train="train")

    def open(self, root: Path, split: str, info, max_pixels: int) -> ImageList:
        return open_cars(root, split, info.input_size, info.mean, info.std, max_pixels)


LAYOUT = CarsLayout()
LAYOUTS.add("cars", LAYOUT)


def open_cars(root: Path, split: str, size: int, mean, std, max_pixels: int) -> ImageList:
    """The `split` ('test' or 'train') of the Stanford Cars copy at `root`."""
    from protobench.data.matfile import load_variable

    candidates, folder = SPLITS[split]
    annos_path = next((root / c for c in candidates if (root / c).is_file()), None)
    if annos_path is None:
        raise DataError(f"{root}: no {' or '.join(candidates)} for the {split} split (the test labels come as "
                        "cars_test_annos_withlabels.mat, distributed apart from the devkit)")
    check_image_folder(root / folder)
    classes = list(np.atleast_1d(load_variable(root / META, "class_names")))  # squeezed: 1 name is a scalar
    if not classes or not all(isinstance(name, str) for name in classes):
        raise DataError(f"{root / META}: class_names must be a list of names (text)")
    records = np.atleast_1d(load_variable(annos_path, "annotations"))
    missing = [k for k in FIELDS if k not in (records.dtype.names or ())]
    if missing:
        raise DataError(f"{annos_path}: the annotations lack {', '.join(missing)}: is it the devkit's file?")
    if len(records) == 0:
        raise DataError(f"{annos_path} holds no annotations")
    rows = [_row(record, f"{annos_path}, annotation {n}", folder, len(classes))
            for n, record in enumerate(records, 1)]
    return ImageList(root, [str(root / folder / fname) for fname, _, _ in rows], [label for _, label, _ in rows],
                     [str(name) for name in classes], size, mean, std, boxes=[box for _, _, box in rows],
                     annotations=[str(root / META), str(annos_path)], kind="cars", split=split,
                     max_pixels=max_pixels)


def _row(record, where: str, folder: str, classes: int) -> tuple[str, int, tuple[float, ...]]:
    """(fname, 0-based label, 0-based half-open box) of one devkit annotation, checked."""
    fname = record["fname"]
    if not isinstance(fname, str) or not fname:
        raise DataError(f"{where}: fname is {_shown(fname)}, not a file name")
    relative_name(fname, f"{where} (fname)", folder)
    x1, y1, x2, y2, label = (number_problem(record[k], f"{where} ({fname}): {k}") for k in FIELDS[:5])
    if label != int(label) or not 1 <= label <= classes:
        raise DataError(f"{where} ({fname}): class {label:g} is not a whole number in 1..{classes}")
    if x2 < x1 or y2 < y1:
        raise DataError(f"{where} ({fname}): the box ({x1:g}, {y1:g})-({x2:g}, {y2:g}) ends before it starts")
    return fname, int(label) - 1, (x1 - 1, y1 - 1, x2, y2)  # 1-based inclusive -> 0-based, right/bottom exclusive


def number_problem(value, where: str) -> float:
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
