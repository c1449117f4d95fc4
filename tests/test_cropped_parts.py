"""Pre-cropped CUB folders (the layout Huang et al.'s crop_cub_data.py writes) with their keypoints:
`python -m protobench.data.cropped` writes the parts.csv that puts each keypoint where the reference
code's int(S * ((x - x1) / w)) puts it, checked against positions worked out by hand."""

import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datasets_fixtures import CUB_IMAGES, write_cub
from protobench.data.cropped import cropped_parts_csv, main
from protobench.data.layouts import open_dataset
from test_part_annotations import info


def crop_like_the_reference(cub, folder, image_ids, suffix=".png"):
    """Each image cut to its box with the box truncated to whole pixels (int of the text before '.'),
    saved under <class>/<file>: what crop_cub_data.py does (it re-encodes as JPEG; PNG here, lossless)."""
    names = dict(line.split() for line in (cub / "images.txt").read_text().splitlines())
    rows = {r[0]: r for r in CUB_IMAGES}
    for image_id in image_ids:
        x, y, w, h = (math.trunc(v) for v in rows[image_id][3:])
        pixels = np.asarray(Image.open(cub / "images" / names[str(image_id)]))[y:y + h, x:x + w]
        out = folder / names[str(image_id)]
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out.with_suffix(suffix) if suffix != ".png" else out)


def test_the_keypoints_land_where_the_reference_puts_them(tmp_path):
    cub = write_cub(tmp_path / "CUB_200_2011", parts=True)
    folder = tmp_path / "cub200_cropped" / "test_cropped"
    crop_like_the_reference(cub, folder, [1, 3])
    assert cropped_parts_csv(cub, folder) == folder / "parts.csv"
    ds = open_dataset(str(folder), info(16))
    table = ds.part_locations(range(len(ds))).table
    by_file = {p.split("/")[-1]: table[n] for n, p in enumerate(ds.paths)}
    # image 1: box (3, 5, 8, 8); beak (7, 9) -> int(16 * 4 / 8) = 8, 8; left eye (10.9, 12.6) read as (10, 12) ->
    # 14, 14; tail not visible; crown (2, 5) -> int(16 * (-1 / 8)) = -2 (outside, still visible), 0
    assert by_file["bird_0001.png"].tolist() == [[8, 8, 1], [14, 14, 1], [0, 0, 0], [-2, 0, 1]]
    # image 3: box (2.5, 4.2, 8, 8) cut at (2, 4) as the reference truncates it; beak (6, 8) -> 8, 8
    assert by_file["bird_0003.png"].tolist() == [[8, 8, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert ds.part_locations(range(len(ds))).names == ("beak", "left eye", "tail", "crown")  # parts.txt's order


def test_its_command_line_and_its_errors(tmp_path, capsys):
    cub = write_cub(tmp_path / "CUB_200_2011", parts=True)
    folder = tmp_path / "test_cropped"
    assert main([str(cub), str(folder)]) == 2 and "none of" in capsys.readouterr().err  # nothing cropped yet
    crop_like_the_reference(cub, folder, [1])
    assert main([str(tmp_path), str(folder)]) == 2 and "CUB_200_2011 folder" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "protobench.data.cropped", str(cub), str(folder)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and (folder / "parts.csv").is_file()
    lines = (folder / "parts.csv").read_text().splitlines()
    assert lines[0] == "image,part,x,y,visible" and lines[1] == "001.Black_footed_Albatross/bird_0001.png,beak,4,4,1"


@pytest.mark.parametrize("size", [224, 97])
def test_the_cub_layout_and_the_cropped_folder_agree_on_every_keypoint(tmp_path, size):
    # the two ways to evaluate CUB give the same keypoints: protobench's own crop and squash (CUB layout)
    # and the pre-cropped folder with the converted parts.csv (boxes within their images, whole numbers)
    cub = write_cub(tmp_path / "CUB_200_2011", parts=True)
    folder = tmp_path / "test_cropped"
    crop_like_the_reference(cub, folder, [1])
    cropped_parts_csv(cub, folder)
    from_cub = open_dataset(str(cub), info(size))
    cub_table = from_cub.part_locations(range(len(from_cub))).table
    first = next(n for n, p in enumerate(from_cub.paths) if p.endswith("bird_0001.png"))
    from_folder = open_dataset(str(folder), info(size, classes=1))  # one class folder
    assert np.array_equal(from_folder.part_locations([0]).table[0], cub_table[first])
