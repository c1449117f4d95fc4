"""Part keypoints: CUB's parts/ files in the archive layout, an ImageFolder's parts.csv, ProtoShapes'
drawn parts; each follows its image's crop and squash, checked against positions worked out by hand."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from datasets_fixtures import write_cub
from protobench.data.layouts import open_dataset
from protobench.data.parts import to_input
from protobench.demo.shapes import PARTS, ProtoShapes, ShapesDesign, draw, part_keypoints
from protobench.errors import DataError
from protobench.models.adapter import ModelInfo


def info(size: int, classes: int = 2) -> ModelInfo:
    return ModelInfo(input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=classes,
                     num_prototypes=1, similarity="log")


@pytest.fixture
def cub(tmp_path):
    return write_cub(tmp_path / "CUB_200_2011", parts=True)


def test_the_mapping_by_hand():
    # crop (10, 20, 30, 60) -> 16 x 16: x 10..30 spans 16 px (x 0.8 per px), y 20..60 spans 16 (x 0.4)
    xy = np.array([[[15.0, 30.0], [29.9, 59.9], [30.0, 60.0], [9.0, 19.0], [5.0, 5.0]]])
    visible = np.array([[True, True, True, True, False]])
    out = to_input(xy, visible, np.array([[10.0, 20.0, 30.0, 60.0]]), 16)
    # int() truncates toward 0: 16 * (9 - 10) / 20 = -0.8 -> 0, as the reference's int()
    assert out[0].tolist() == [[4, 4, 1], [15, 15, 1], [16, 16, 1], [0, 0, 1], [0, 0, 0]]
    unreadable = to_input(xy, visible, np.full((1, 4), np.nan), 16)  # an image whose header cannot be read
    assert not unreadable[..., 2].any()


def test_the_mapping_divides_before_it_scales_as_the_reference():
    # the reference computes int(224 * ((x - x1) / w)): 61 / 112 rounds to 0.54464285714285710 (below the
    # exact 0.544642857142857142...), so 224 times it is 121.99999999999999 -> 121; 224 * 61 / 112 is 122.0
    # exactly. The two orders differ on 8 of the 125,541 (offset, width) pairs with width <= 500, these among them.
    for offset, width, expected in ((61, 112, 121), (61, 224, 60), (115, 224, 114), (183, 336, 121)):
        out = to_input(np.array([[[offset, offset]]], dtype=float), np.array([[True]]),
                       np.array([[0.0, 0.0, width, width]]), 224)
        assert out[0, 0].tolist() == [expected, expected, 1], (offset, width)


def test_cub_parts_follow_the_crop_and_the_squash(cub):
    """The fixture's test images 1, 3, 5 at 16 px (tests/datasets_fixtures.py)."""
    ds = open_dataset(str(cub), info(16))
    found = ds.part_locations(range(len(ds)))
    assert found.names == ("beak", "left eye", "tail", "crown")
    assert found.files == (str(cub / "parts" / "parts.txt"), str(cub / "parts" / "part_locs.txt"))
    assert found.table.tolist() == [
        # image 1, box x 3 y 5 w 8 h 8 -> crop (3, 5, 11, 13), x 2 per px: beak (7, 9) -> (8, 8); left eye
        # (10.9, 12.6) is first truncated to (10, 12), as the reference reads it -> (14, 14); tail hidden;
        # crown (2, 5) lies left of the crop -> u = int(16 * -1 / 8) = -2: visible, in no box inside the image
        [[8, 8, 1], [14, 14, 1], [0, 0, 0], [-2, 0, 1]],
        # image 3, box x 2.5 y 4.2 w h 8 -> the pixels it touches (2, 4, 11, 13), 9 px: beak (6, 8) ->
        # int(16 * 4 / 9) = 7 both ways
        [[7, 7, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
        # image 5, box (15, 10) + 30 x 30 runs past the 20 x 16 image: crop (15, 10, 20, 16), 5 x 6 px:
        # beak (17, 13) -> (int(6.4), int(8.0)) = (6, 8); tail (19, 15) -> (int(12.8), int(13.3)) = (12, 13)
        [[6, 8, 1], [0, 0, 0], [12, 13, 1], [0, 0, 0]],
    ]
    # and the keypoint lands where the image shows that place: red = x, green = y in the fixture images
    for index, row in enumerate(found.table):
        x, _, _ = ds[index]
        for (u, v, shown), k in zip(row, range(4)):
            if shown and 0 <= u < 16 and 0 <= v < 16:
                part_x, part_y = [p for p in CUB_TEST_KEYPOINTS[index] if p[0] == k][0][1:]
                assert abs(x[0, v, u].item() * 255 - part_x) <= 1 and abs(x[1, v, u].item() * 255 - part_y) <= 1


CUB_TEST_KEYPOINTS = {0: [(0, 7, 9), (1, 10, 12)], 1: [(0, 6, 8)], 2: [(0, 17, 13), (2, 19, 15)]}


def test_cub_parts_only_for_the_images_asked(cub):
    ds = open_dataset(str(cub), info(16), split="all")
    found = ds.part_locations([1])  # image id 2 (training): its beak at (1, 1) in a 20 x 16 box at (0, 0)
    assert found.table[1].tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert not np.delete(found.table, 1, axis=0)[..., 2].any()


def test_cub_without_parts_still_evaluates_until_parts_are_asked_for(cub):
    import shutil

    shutil.rmtree(cub / "parts")
    ds = open_dataset(str(cub), info(16))  # the misalignment benchmark never reads them
    with pytest.raises(DataError, match="missing annotation file .*part"):
        ds.part_locations([0])


@pytest.mark.parametrize("edit, needle", [
    (("parts.txt", "1 beak\n3 tail\n"), "part ids must be 1, 2"),
    (("part_locs.txt", "1 1 7.0 9.0\n"), "expected <image_id> <part_id> <x> <y> <visible"),
    (("part_locs.txt", "1 5 7.0 9.0 1\n"), "part id 5 is not in parts.txt"),
    (("part_locs.txt", "1 1 7.0 nan 1\n"), "not a finite number"),
    (("part_locs.txt", "1 1 7.0 9.0 2\n"), "visible 0 or 1"),
    (("part_locs.txt", "1 1 7.0 9.0 1\n1 1 3.0 9.0 1\n"), "listed twice .first on line 1"),
])
def test_broken_cub_part_files_are_one_line_naming_the_file(cub, edit, needle):
    name, text = edit
    (cub / "parts" / name).write_text(text)
    ds = open_dataset(str(cub), info(16))
    with pytest.raises(DataError, match=needle) as err:
        ds.part_locations([0])
    assert name in str(err.value) and "\n" not in str(err.value)


def test_an_image_folder_parts_csv(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class=2, size=40)  # 40 x 40 images, squashed to 32 px
    (root / "parts.csv").write_text("image,part,x,y,visible\n"
                                    "class0/img0.png,head,10,30,1\n"
                                    "./class0/img0.png,tail,39.9,0.5,1\n"
                                    "class1/img1.png,tail,,,0\n"
                                    "class1/img1.png,head,20,20,1\n")
    ds = open_dataset(str(root), info(32))
    found = ds.part_locations(range(4))
    assert found.names == ("head", "tail")  # in the order they first appear
    # x 32/40 = 0.8 per px: (10, 30) -> (8, 24); (39.9, 0.5) -> (31, 0); (20, 20) -> (16, 16)
    assert found.table.tolist() == [[[8, 24, 1], [31, 0, 1]], [[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]],
                                    [[16, 16, 1], [0, 0, 0]]]


def test_parts_csv_follows_the_exif_orientation(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees: displayed 20 wide, 40 tall
    image.save(root / "a" / "p.jpg", exif=exif)
    (root / "parts.csv").write_text("image,part,x,y,visible\na/p.jpg,eye,10,30,1\n")
    found = open_dataset(str(root), info(32, classes=1)).part_locations([0])
    assert found.table.tolist() == [[[16, 24, 1]]]  # 32/20 and 32/40 per px, not 32/40 and 32/20


@pytest.mark.parametrize("text, needle", [
    ("img,part,x,y,visible\n", "the first line must be the header image,part,x,y,visible"),
    ("image,part,x,y,visible\n", "lists no part"),
    ("image,part,x,y,visible\nclass0/nope.png,head,1,1,1\n", "is not an image of"),
    ("image,part,x,y,visible\nclass0/img0.png,head,1,1,yes\n", "visible 1 or 0"),
    ("image,part,x,y,visible\nclass0/img0.png,head,1,inf,1\n", "not a finite number"),
    ("image,part,x,y,visible\nclass0/img0.png,head,1\n", "expected image,part,x,y,visible"),
    ("image,part,x,y,visible\nclass0/img0.png,head,1,1,1\nclass0/img0.png,head,2,2,1\n", "listed twice"),
])
def test_broken_parts_csv_is_one_line_naming_the_line(tmp_path, text, needle):
    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class=1, size=40)
    (root / "parts.csv").write_text(text)
    with pytest.raises(DataError, match=needle) as err:
        open_dataset(str(root), info(32)).part_locations([0])
    assert "parts.csv" in str(err.value)


def test_protoshapes_annotates_the_parts_it_draws():
    design = ShapesDesign()
    ds = ProtoShapes("test")
    found = ds.part_locations(range(24))
    assert found.names == PARTS == ("square", "frame-top", "frame-right", "frame-bottom", "frame-left")
    hidden = 0
    for i in range(24):
        pixels = draw(design, "test", i)[0].astype(float) / 255
        saturation = pixels.max(axis=-1) - pixels.min(axis=-1)  # the square is coloured, all else grey
        vertical = ds.labels[i] // 3 == 1
        xy, _ = part_keypoints(design, "test", i)
        for (u, v, shown), name, (x, y) in zip(found.table[i], PARTS, xy):
            hidden += not shown
            if not shown:  # only a frame side off the image
                assert name != "square" and not (0 <= x < 64 and 0 <= y < 64)
                continue
            assert (u, v) == (int(x), int(y))
            if name == "square":
                assert saturation[v, u] > 0.3
                continue
            # a frame keypoint: grey, inside a stripe of the class's orientation (the field's run the other way)
            assert saturation[v, u] < 0.05
            along = pixels[v, :, 0] if vertical else pixels[:, u, 0]
            assert np.ptp(along[max(0, (u if vertical else v) - 2):(u if vertical else v) + 2]) > 0.05
    assert 0 < hidden < 24 * 4  # some frame sides fall off the image, most do not


def test_protoshapes_square_keypoint_is_its_centre_by_hand():
    xy, visible = part_keypoints(ShapesDesign(), "test", 0)
    pixels = draw(ShapesDesign(), "test", 0)[0]
    coloured = np.argwhere(pixels.max(axis=-1).astype(int) - pixels.min(axis=-1) > 60)
    top, left = coloured.min(axis=0)
    assert xy[0].tolist() == [left + 6, top + 6]  # the 12 px square's centre
    assert xy[1].tolist() == [left + 6, top + 6 - 13]  # 6 (half the square) + 3 (ring) + 4 (half the frame)
    assert visible.tolist() == [(0 <= x < 64 and 0 <= y < 64) for x, y in xy.tolist()]


def test_part_annotations_leave_the_demo_images_unchanged():
    """The same bytes as before parts existed (digest taken from the generator at the parent commit)."""
    digest = hashlib.sha256()
    for split, count in (("train", 1800), ("test", 150)):
        for i in range(0, count, 7):
            digest.update(draw(ShapesDesign(), split, i)[0].tobytes())
    assert digest.hexdigest() == "1a227b932ec5dde47bc75ee2610b367d715c26d3d5227beec2b3c09fbccbac6a"
    x, label, index = ProtoShapes("test")[3]
    assert isinstance(x, torch.Tensor) and (label, index) == (3, 3)
