"""CUB keypoints for a folder of CUB images cut to their boxes beforehand: Huang et al.'s
`cub200_cropped/test_cropped` (written by their `util/crop_cub_data.py`, one JPEG per image in
`<class>/<file>`), or any folder laid out the same way.

    python -m protobench.data.cropped CUB_200_2011/ cub200_cropped/test_cropped/

writes `test_cropped/parts.csv` (docs/datasets.md, Part annotations): every keypoint of every image
in the folder, moved into its crop as the reference code moves it: the coordinates and the box's
corner truncated to whole pixels (`int(float(x))`, `int(x1)`), then x - x1, y - y1. protobench then
evaluates the folder as an ImageFolder, mapping each keypoint to int(S * ((x - x1) / w)) with w the
cropped image's width (the box's, as the reference divides by), so the part hits are the
reference's on the reference's own pixels (docs/metrics.md, Consistency and stability).
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from protobench.data.annotations import read_table
from protobench.data.parts import CSV_HEADER, CSV_NAME, read_cub_parts
from protobench.errors import DataError


def cropped_parts_csv(cub: str | Path, folder: str | Path) -> Path:
    """Write `folder`/parts.csv for the CUB images of `folder` (`<class>/<file>` as in `cub`'s
    images.txt); returns its path. Images of images.txt that the folder lacks are left out."""
    cub, folder = Path(cub), Path(folder)
    if not (cub / "images.txt").is_file() or not (cub / "parts" / "part_locs.txt").is_file():
        raise DataError(f"{cub} is not a CUB_200_2011 folder with parts/ (images.txt, bounding_boxes.txt, "
                        "parts/parts.txt, parts/part_locs.txt): give the original archive's folder")
    names = {image_id: cols[0] for image_id, cols in read_table(cub / "images.txt", 2).items()}
    boxes = read_table(cub / "bounding_boxes.txt", 5)
    present = [image_id for image_id in sorted(names) if (folder / names[image_id]).is_file()]
    if not present:
        raise DataError(f"{folder} holds none of {cub}'s images as <class>/<file>: give the cropped split's folder "
                        "(e.g. cub200_cropped/test_cropped)")
    parts = read_cub_parts(cub, present)
    out = folder / CSV_NAME
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for row, image_id in enumerate(present):
            x1, y1 = (math.trunc(float(v)) for v in boxes[image_id][:2])  # the reference's int(text before '.')
            for k, name in enumerate(parts.names):
                x, y = parts.xy[row, k]
                shown = bool(parts.visible[row, k])
                writer.writerow([names[image_id], name, int(x) - x1 if shown else "", int(y) - y1 if shown else "",
                                 int(shown)])
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m protobench.data.cropped CUB_200_2011/ cub200_cropped/test_cropped/", file=sys.stderr)
        return 2
    try:
        print(cropped_parts_csv(*args))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
