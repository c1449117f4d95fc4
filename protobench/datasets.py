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

from pathlib import Path
from typing import Any, Callable

from protobench.data import MAX_IMAGE_PIXELS, ImageFolder, ImageList
from protobench.errors import DataError

KINDS = ("cub", "cars", "imagefolder")
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt")
CARS_META = "devkit/cars_meta.mat"
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


def read_table(path: Path, columns: int) -> dict[int, list[str]]:
    """A whitespace-separated annotation file -> {first column as int: the other columns}."""
    if not path.is_file():
        raise DataError(f"missing annotation file {path}: is the dataset unpacked whole?")
    table: dict[int, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=columns - 1)
        if len(parts) != columns or not parts[0].isdigit():
            raise DataError(f"{path}:{number}: expected {columns} columns starting with an id, got {line!r}")
        table[int(parts[0])] = parts[1:]
    return table


def open_cub(root: Path, split: str, size: int, mean, std, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageList:
    """CUB-200-2011 from its archive layout, each image cropped to its bounding box."""
    if split not in ("test", "train", "all"):
        raise DataError(f"unknown --split {split!r} for CUB: use test, train or all")
    images = read_table(root / "images.txt", 2)
    labels = read_table(root / "image_class_labels.txt", 2)
    is_train = read_table(root / "train_test_split.txt", 2)
    boxes = read_table(root / "bounding_boxes.txt", 5)
    class_table = read_table(root / "classes.txt", 2)
    keep = {"test": ("0",), "train": ("1",), "all": ("0", "1")}[split]
    ids = [i for i in sorted(images) if _field(is_train, i, "train_test_split.txt")[0] in keep]
    if not ids:
        raise DataError(f"{root}: no images in the {split} split (train_test_split.txt)")
    class_ids = sorted(class_table)
    position = {cid: k for k, cid in enumerate(class_ids)}
    paths = [str(root / "images" / images[i][0]) for i in ids]
    targets = [position[_class_id(labels, i, position)] for i in ids]
    xywh = [tuple(_floats(_field(boxes, i, "bounding_boxes.txt"), "bounding_boxes.txt", i)) for i in ids]
    crops = [(x, y, x + w, y + h) for x, y, w, h in xywh]
    return ImageList(root, paths, targets, [class_table[c][0] for c in class_ids], size, mean, std, boxes=crops,
                     annotations=[str(root / name) for name in CUB_FILES], kind="cub", split=split,
                     max_pixels=max_pixels)


def _field(table: dict[int, list[str]], image_id: int, name: str) -> list[str]:
    if image_id not in table:
        raise DataError(f"{name} has no line for image id {image_id} (listed in images.txt)")
    return table[image_id]


def _class_id(labels: dict[int, list[str]], image_id: int, known: dict[int, int]) -> int:
    value = _field(labels, image_id, "image_class_labels.txt")[0]
    if not value.isdigit() or int(value) not in known:
        raise DataError(f"image_class_labels.txt: image {image_id} has class {value!r}, not an id in classes.txt")
    return int(value)


def _floats(values: list[str], name: str, image_id: int) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise DataError(f"{name}: image {image_id} has a non-numeric box {values}") from None


def open_cars(root: Path, split: str, size: int, mean, std, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageList:
    """Stanford Cars from its devkit annotations, each image cropped to its bounding box."""
    if split not in CARS_SPLITS:
        raise DataError(f"unknown --split {split!r} for Stanford Cars: use test or train")
    candidates, folder = CARS_SPLITS[split]
    annos_path = next((root / c for c in candidates if (root / c).is_file()), None)
    if annos_path is None:
        raise DataError(f"{root}: no {' or '.join(candidates)} for the {split} split (the test labels come as "
                        "cars_test_annos_withlabels.mat, distributed apart from the devkit)")
    classes = [str(name) for name in _loadmat(root / CARS_META, "class_names")]
    paths, targets, crops = [], [], []
    for record in _loadmat(annos_path, "annotations"):
        x1, y1, x2, y2, label = (float(record[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class"))
        if not 1 <= label <= len(classes):
            raise DataError(f"{annos_path}: {record['fname']} has class {label:g}, outside 1..{len(classes)}")
        paths.append(str(root / folder / str(record["fname"])))
        targets.append(int(label) - 1)
        crops.append((x1 - 1, y1 - 1, x2, y2))  # 1-based inclusive -> 0-based, right/bottom exclusive
    return ImageList(root, paths, targets, classes, size, mean, std, boxes=crops,
                     annotations=[str(root / CARS_META), str(annos_path)], kind="cars", split=split,
                     max_pixels=max_pixels)


def _loadmat(path: Path, key: str):
    """One variable of a MATLAB file, with structs as records (scipy reads the devkit's v5 files)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("reading Stanford Cars' .mat annotations needs scipy: pip install scipy") from None
    try:
        data = loadmat(str(path), squeeze_me=True)
    except Exception as err:  # scipy raises several types for a file that is not MATLAB
        raise DataError(f"{path} is not a readable MATLAB file ({err})") from err
    if key not in data:
        raise DataError(f"{path} has no variable {key!r}: is it the Stanford Cars devkit file?")
    return list(_atleast_1d(data[key]))


def _atleast_1d(value):
    import numpy as np

    return np.atleast_1d(value)  # squeeze_me turns a one-element struct array into a scalar


READERS: dict[str, Callable[..., ImageList]] = {"cub": open_cub, "cars": open_cars}
