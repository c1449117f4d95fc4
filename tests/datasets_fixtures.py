"""Tiny datasets in the CUB-200-2011 and Stanford Cars layouts.

Every image is W x H with red = x and green = y of each pixel (PNG, lossless), so a crop can
be checked pixel by pixel against the box worked out by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

W, H = 20, 16


def coordinate_image(path: Path, blue: int = 0) -> None:
    ys, xs = np.mgrid[0:H, 0:W]
    pixels = np.stack([xs, ys, np.full_like(xs, blue)], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# CUB: (image id, class id, is_training, x, y, width, height); ids 1-based, listed out of order on purpose
CUB_IMAGES = [
    (1, 1, 0, 3.0, 5.0, 8.0, 8.0),
    (2, 1, 1, 0.0, 0.0, 20.0, 16.0),
    (3, 2, 0, 2.5, 4.2, 8.0, 8.0),
    (4, 2, 1, 12.0, 8.0, 8.0, 8.0),
    (5, 2, 0, 15.0, 10.0, 30.0, 30.0),  # runs past the image: clamped
]
CUB_CLASSES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross"}
CUB_PART_NAMES = ["beak", "left eye", "tail", "crown"]  # parts/parts.txt, ids 1..4 (names may hold spaces)
# parts/part_locs.txt: (image id, part id, x, y, visible); invisible parts at 0 0 as in the archive
CUB_PARTS = [
    (1, 1, 7.0, 9.0, 1), (1, 2, 10.9, 12.6, 1), (1, 3, 0.0, 0.0, 0), (1, 4, 2.0, 5.0, 1),
    (3, 1, 6.0, 8.0, 1), (3, 2, 0.0, 0.0, 0), (3, 3, 0.0, 0.0, 0), (3, 4, 0.0, 0.0, 0),
    (5, 1, 17.0, 13.0, 1), (5, 2, 0.0, 0.0, 0), (5, 3, 19.0, 15.0, 1), (5, 4, 0.0, 0.0, 0),
    (2, 1, 1.0, 1.0, 1), (4, 1, 13.0, 9.0, 1),  # training images: parts 2-4 missing, which reads as not visible
]


def write_cub(root: Path, parts: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    names = {}
    for image_id, class_id, _, *_ in CUB_IMAGES:
        names[image_id] = f"{CUB_CLASSES[class_id]}/bird_{image_id:04d}.png"
        coordinate_image(root / "images" / names[image_id], blue=image_id)
    order = [5, 3, 1, 4, 2]
    rows = {r[0]: r for r in CUB_IMAGES}  # id -> (id, class, is_training, x, y, w, h)
    (root / "images.txt").write_text("".join(f"{i} {names[i]}\n" for i in order))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {rows[i][1]}\n" for i in order))
    (root / "train_test_split.txt").write_text("".join(f"{i} {rows[i][2]}\n" for i in order))
    (root / "bounding_boxes.txt").write_text("".join(f"{i} {' '.join(str(v) for v in rows[i][3:])}\n" for i in order))
    (root / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in CUB_CLASSES.items()))
    if not parts:  # parts/ only where a test reads it: a forced ImageFolder would count it as a class folder
        return root
    (root / "parts").mkdir()
    (root / "parts" / "parts.txt").write_text("".join(f"{k} {n}\n" for k, n in enumerate(CUB_PART_NAMES, 1)))
    (root / "parts" / "part_locs.txt").write_text("".join(f"{i} {k} {x} {y} {v}\n" for i, k, x, y, v in CUB_PARTS))
    return root


# Cars: (fname, class 1-based, x1, y1, x2, y2), MATLAB 1-based inclusive pixel coordinates
CARS_TEST = [("00001.png", 2, 4, 2, 11, 9), ("00002.png", 1, 1, 1, 20, 16), ("00003.png", 3, 10, 5, 17, 12)]
CARS_TRAIN = [("00001.png", 1, 1, 1, 8, 8)]
CARS_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Bentley Mulsanne Sedan 2011"]


def _annotations(rows):
    dtype = [(k, object) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    records = [(np.uint16(x1), np.uint16(y1), np.uint16(x2), np.uint16(y2), np.uint8(c), f)
               for f, c, x1, y1, x2, y2 in rows]
    return np.array([records], dtype=dtype)  # 1 x N struct array, as in the devkit


def write_cars(root: Path, labels_in_devkit: bool = False) -> Path:
    from scipy.io import savemat

    (root / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([CARS_CLASSES], dtype=object)})
    test_annos = root / ("devkit" if labels_in_devkit else "") / "cars_test_annos_withlabels.mat"
    savemat(test_annos, {"annotations": _annotations(CARS_TEST)})
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _annotations(CARS_TRAIN)})
    for k, (fname, *_) in enumerate(CARS_TEST):
        coordinate_image(root / "cars_test" / fname, blue=k)
    for fname, *_ in CARS_TRAIN:
        coordinate_image(root / "cars_train" / fname, blue=99)
    return root


def png_bytes(width: int, height: int, bit_depth: int = 16, rows: int | None = None) -> bytes:
    """A greyscale PNG whose header says width x height, with `rows` rows of zeros (all when None).

    Written row by row through zlib, so a 13 300 x 13 300 16-bit image of zeros costs 340 KB on
    disk and almost no memory to make (PIL would need 354 MB to hold it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)  # colour type 0: greyscale
    row = bytes(1 + width * bit_depth // 8)  # filter byte 0, then the samples
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
