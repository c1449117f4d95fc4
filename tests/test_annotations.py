"""Hostile or careless annotation files: each is one DataError naming the file and the line
(or annotation), never a traceback, never a file outside the dataset, never a memory blow-up."""

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from datasets_fixtures import CARS_CLASSES, write_cars, write_cub
from protobench.models.adapter import ModelInfo
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.cli.app import app
from protobench.data.annotations import ANNOTATION_BYTES
from protobench.data.layouts import open_dataset
from protobench.errors import DataError
from protobench.data.matfile import INFLATED_BYTES, MAT_BYTES


def info(classes: int = 2) -> ModelInfo:
    return ModelInfo(input_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=classes,
                     num_prototypes=1, similarity="log")


@pytest.fixture
def cub(tmp_path):
    return write_cub(tmp_path / "CUB_200_2011")


def replace_line(path, image_id: int, new: str) -> int:
    """Replace the line of `image_id` in an annotation file; its line number (1-based)."""
    lines = path.read_text().splitlines()
    number = next(n for n, line in enumerate(lines) if line.split()[0] == str(image_id))
    lines[number] = new
    path.write_text("\n".join(lines) + "\n")
    return number + 1


def one_line_error(root, expected: str, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        open_dataset(str(root), info(), **kwargs)
    message = str(err.value)
    assert "\n" not in message and expected in message, message
    return message


# images.txt lists image 1 on line 3 (the fixture lists ids in the order 5 3 1 4 2)
@pytest.mark.parametrize("name", ["/etc/passwd", "../../outside.png", "001.Black_footed_Albatross/../../../x.png",
                                  "..\\..\\x.png", "C:\\x.png", "C:x.png", "\\\\server\\share\\x.png", "a\0b.png"])
def test_cub_image_paths_stay_inside_images(cub, name):
    number = replace_line(cub / "images.txt", 1, f"1 {name}")
    assert number == 3
    one_line_error(cub, f"{cub / 'images.txt'}:3: image path {name!r} is not inside images/")


@pytest.mark.parametrize("box, why", [
    ("inf 5 8 8", "is not finite"), ("3 5 nan 8", "is not finite"), ("3 5 8 -inf", "is not finite"),
    ("1e308 5 1e308 8", "is not finite"),  # x + width overflows
    ("3 5 -8 8", "width or height <= 0"), ("3 5 8 0", "width or height <= 0"),
    ("3 5 8 eight", "is not four numbers"), ("3 5 8 8 9", "is not four numbers"),
])
def test_cub_boxes_are_checked_when_read(cub, box, why):
    number = replace_line(cub / "bounding_boxes.txt", 1, f"1 {box}")
    message = one_line_error(cub, f"{cub / 'bounding_boxes.txt'}:{number}: the box")
    assert why in message


def test_cub_box_too_few_columns(cub):
    number = replace_line(cub / "bounding_boxes.txt", 1, "1 3 5 8")
    one_line_error(cub, f"{cub / 'bounding_boxes.txt'}:{number}: expected 5 columns starting with an id")


@pytest.mark.parametrize("file, line, why", [
    ("images.txt", "3 002.Laysan_Albatross/bird_0003.png", "id 3 is listed twice (first on line 2)"),
    ("bounding_boxes.txt", "3 0 0 1 1", "id 3 is listed twice (first on line 2)"),
    ("classes.txt", "1 001.again", "id 1 is listed twice (first on line 1)"),
    ("images.txt", "\u00b2 bird.png", "expected 2 columns starting with an id"),  # '²'.isdigit() is True
    ("images.txt", "9" * 5000 + " bird.png", "expected 2 columns starting with an id"),  # past int()'s digit limit
    ("train_test_split.txt", "9 2", "is_training_image must be 1 (train) or 0 (test), got '2'"),
    ("image_class_labels.txt", "9 two", "the class id 'two' is not a whole number"),
])
def test_cub_tables_refuse_what_they_cannot_mean(cub, file, line, why):
    with open(cub / file, "a") as f:
        f.write(line + "\n")
    one_line_error(cub, why)


def test_cub_annotations_must_be_utf8_text_files_of_sane_size(cub):
    (cub / "classes.txt").write_bytes(b"1 001.Black_footed_Albatross\n2 002.Laysan\xe9Albatross\n")
    one_line_error(cub, f"{cub / 'classes.txt'}:2: not UTF-8 text (byte 0xe9)")
    (cub / "classes.txt").unlink()
    (cub / "classes.txt").mkdir()
    one_line_error(cub, f"{cub / 'classes.txt'} is not a file")
    (cub / "classes.txt").rmdir()
    with open(cub / "classes.txt", "wb") as f:
        f.truncate(ANNOTATION_BYTES + 1)  # sparse: no disk, and protobench must not read it
    one_line_error(cub, f"{cub / 'classes.txt'} is 16 MiB, more than an annotation file may be (16 MiB)")


def test_cub_a_utf8_bom_is_fine(cub):
    (cub / "classes.txt").write_bytes(b"\xef\xbb\xbf" + (cub / "classes.txt").read_bytes())
    assert open_dataset(str(cub), info()).classes[0] == "001.Black_footed_Albatross"


def test_cub_an_image_path_naming_a_folder_is_skipped_with_its_reason(tmp_path, cub):
    replace_line(cub / "images.txt", 1, "1 001.Black_footed_Albatross")
    ds = open_dataset(str(cub), info())
    assert ds[0][0] is None and ds.why_skipped(0) == "it is a directory, not an image file"
    ckpt = tmp_path / "two.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(num_classes=2, num_prototypes=4), seed=0).save(str(ckpt))
    result = CliRunner().invoke(app, ["evaluate", "--ckpt", str(ckpt), "--data", str(cub), "--out",
                                      str(tmp_path / "o"), "--steps", "1", "--strict"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output
    assert (f"cannot use image {cub / 'images' / '001.Black_footed_Albatross'}: it is a directory"
            in " ".join(result.stderr.split()))


def test_cub_a_box_beyond_the_image_skips_it_at_decode_time(tmp_path, cub):
    replace_line(cub / "bounding_boxes.txt", 1, "1 20 5 8 8")  # the images are 20 x 16: x = 20 is past the edge
    ds = open_dataset(str(cub), info())
    assert ds[0][0] is None
    assert ds.why_skipped(0) == "the box (left, top, right, bottom) = (20, 5, 28, 13) lies outside the 20 x 16 image"


# Stanford Cars

def write_annotations(path, rows, fields=("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")):
    from scipy.io import savemat

    dtype = [(k, object) for k in fields]
    savemat(path, {"annotations": np.array([[tuple(r) for r in rows]], dtype=dtype)})


@pytest.fixture
def cars(tmp_path):
    return write_cars(tmp_path / "stanford_cars")


@pytest.mark.parametrize("row, why", [
    ((1, 1, 8, 8, 1, "/etc/passwd"), "fname): image path '/etc/passwd' is not inside cars_test/"),
    ((1, 1, 8, 8, 1, "../cars_train/00001.png"), "fname): image path '../cars_train/00001.png' is not inside cars_test/"),
    ((1, 1, 8, 8, 1, 5.0), "fname is 5.0, not a file name"),
    ((1, 1, 8, 8, 2.5, "a.png"), "(a.png): class 2.5 is not a whole number in 1..3"),
    ((1, 1, 8, 8, 4, "a.png"), "(a.png): class 4 is not a whole number in 1..3"),
    ((1, np.nan, 8, 8, 1, "a.png"), "(a.png): bbox_y1 is nan, not a finite number"),
    ((1, 1, np.inf, 8, 1, "a.png"), "(a.png): bbox_x2 is inf, not a finite number"),
    ((1, 1, "8", 8, 1, "a.png"), "(a.png): bbox_x2 is '8', not a finite number"),
    ((9, 1, 8, 8, 1, "a.png"), "(a.png): the box (9, 1)-(8, 8) ends before it starts"),
])
def test_cars_annotations_are_checked(cars, row, why):
    write_annotations(cars / "cars_test_annos_withlabels.mat", [(1, 1, 8, 8, 1, "00001.png"), row])
    with pytest.raises(DataError) as err:
        open_dataset(str(cars), info(3))
    assert f"{cars / 'cars_test_annos_withlabels.mat'}, annotation 2" in str(err.value) and why in str(err.value)


def test_cars_annotations_lacking_a_field(cars):
    write_annotations(cars / "cars_test_annos_withlabels.mat", [(1, 1, 8, 8, "a.png")],
                      fields=("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "fname"))
    with pytest.raises(DataError, match="the annotations lack class: is it the devkit's file"):
        open_dataset(str(cars), info(3))


def test_cars_compressed_mat_files_still_load(cars):
    from scipy.io import savemat

    dtype = [(k, object) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    rows = np.array([[(np.uint16(4), np.uint16(2), np.uint16(11), np.uint16(9), np.uint8(2), "00001.png")]], dtype=dtype)
    savemat(cars / "cars_test_annos_withlabels.mat", {"annotations": rows}, do_compression=True)
    savemat(cars / "devkit" / "cars_meta.mat", {"class_names": np.array([CARS_CLASSES], dtype=object)},
            do_compression=True)
    ds = open_dataset(str(cars), info(3))
    assert ds.labels == [1] and ds.boxes == [(3.0, 1.0, 11.0, 9.0)] and ds.classes == CARS_CLASSES


def struct_bomb(path, length: int) -> None:
    """A 1 x 1 struct array saved by scipy whose header then claims 1 x `length` elements."""
    import struct

    write_annotations(path, [(1, 1, 8, 8, 1, "00001.png")])
    content = bytearray(path.read_bytes())
    dims = struct.pack("<IIii", 5, 8, 1, 1)  # miINT32, 8 bytes, dims 1 x 1
    at = content.index(dims)
    content[at:at + 16] = struct.pack("<IIii", 5, 8, 1, length)
    path.write_bytes(bytes(content))


def test_cars_a_struct_header_declaring_millions_of_elements_is_refused(cars):
    # scipy would allocate the 50 000 000 x 6 fields before reading one (2.4 GB here)
    struct_bomb(cars / "cars_test_annos_withlabels.mat", 50_000_000)
    with pytest.raises(DataError, match=r"is not a MATLAB file protobench can read safely \(a 1x50000000 array"):
        open_dataset(str(cars), info(3))


def test_cars_a_compressed_variable_that_inflates_too_far_is_refused(cars):
    from scipy.io import savemat

    savemat(cars / "cars_test_annos_withlabels.mat", {"zeros": np.zeros(INFLATED_BYTES + 1, np.uint8)},
            do_compression=True)
    assert (cars / "cars_test_annos_withlabels.mat").stat().st_size < 1 << 20
    with pytest.raises(DataError, match="its compressed variables inflate to more than 64 MiB"):
        open_dataset(str(cars), info(3))


@pytest.mark.parametrize("content, why", [
    (b"not a matlab file", "is not a readable MATLAB file"),
    (b"MATLAB 7.3 MAT-file".ljust(124) + b"\x00\x02IM", "is not a readable MATLAB file"),  # HDF5: scipy refuses
    (b"MATLAB 5.0 MAT-file".ljust(124) + b"\x00\x01IM" + b"\x0f\x00\x00\x00\x10\x00\x00\x00" + b"x" * 16,
     "corrupt compressed data"),
])
def test_cars_files_that_are_not_matlab(cars, content, why):
    (cars / "devkit" / "cars_meta.mat").write_bytes(content)
    with pytest.raises(DataError, match=why):
        open_dataset(str(cars), info(3))


def test_cars_huge_mat_file_is_not_read(cars):
    with open(cars / "devkit" / "cars_meta.mat", "wb") as f:
        f.truncate(MAT_BYTES + 1)
    with pytest.raises(DataError, match="is 16 MiB, more than an annotation file may be"):
        open_dataset(str(cars), info(3))


def test_cars_class_names_must_be_names(cars):
    from scipy.io import savemat

    savemat(cars / "devkit" / "cars_meta.mat", {"class_names": np.arange(3.0)})
    with pytest.raises(DataError, match="class_names must be a list of names"):
        open_dataset(str(cars), info(3))


def test_evaluate_reports_a_hostile_cub_in_one_line(tmp_path, cub):
    replace_line(cub / "images.txt", 1, "1 ../../../../etc/passwd")
    ckpt = tmp_path / "two.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(num_classes=2, num_prototypes=4), seed=0).save(str(ckpt))
    result = CliRunner().invoke(app, ["evaluate", "--ckpt", str(ckpt), "--data", str(cub), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.stderr.splitlines() if line.strip()][0].startswith("error:")
    assert "is not inside images/" in " ".join(result.stderr.split())
    assert not (tmp_path / "o" / "meta.json").exists()
    json.dumps(result.stderr)  # printable


def test_a_missing_image_folder_is_one_error(cub, cars):
    import shutil

    shutil.rmtree(cub / "images")
    one_line_error(cub, f"{cub / 'images'} is not a folder of images: is the dataset unpacked whole?")
    shutil.rmtree(cars / "cars_test")
    with pytest.raises(DataError, match="cars_test is not a folder of images"):
        open_dataset(str(cars), info(3))


def test_files_that_cannot_be_read_are_one_error(cub, tmp_path, monkeypatch):
    from pathlib import Path

    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "folder", classes=2, per_class=1)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    one_line_error(cub, f"cannot read {cub / 'images.txt'}: Permission denied")
    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(DataError, match=f"cannot list {folder}: Permission denied"):
        open_dataset(folder, info())


@pytest.mark.parametrize("find, patch, why", [
    # a uint16 value stored as a small element (type 4, 2 bytes): an unknown type instead
    (b"\x04\x00\x02\x00", b"\x04\x06\x02\x00", "a data element of type 1540"),
    # the array flags of a uint16 field (miUINT32, 8 bytes, class 11): the complex flag, with no imaginary part
    (b"\x06\x00\x00\x00\x08\x00\x00\x00\x0b\x00\x00\x00", b"\x06\x00\x00\x00\x08\x00\x00\x00\x0b\x08\x00\x00",
     "an array with 1 data part(s) where its flags say 2"),
])
def test_cars_mat_files_that_crash_scipy_are_refused(cars, find, patch, why):
    """Each one-byte change made scipy's compiled reader crash the interpreter (a segmentation fault)."""
    path = cars / "cars_test_annos_withlabels.mat"
    content = path.read_bytes()
    assert find in content
    path.write_bytes(content.replace(find, patch, 1))
    with pytest.raises(DataError, match=re.escape(f"is not a MATLAB file protobench can read safely ({why}")):
        open_dataset(str(cars), info(3))


def mutations(content: bytes, count: int, seed: int):
    """`count` damaged copies of `content` (fixed seed): bytes changed, cut short, or lines repeated."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        damaged = bytearray(content)
        if k % 3 == 0:
            for _ in range(int(rng.integers(1, 4))):
                damaged[int(rng.integers(len(damaged)))] = int(rng.integers(0, 256))
        elif k % 3 == 1:
            damaged = damaged[: int(rng.integers(0, len(damaged) + 1))]
        else:
            lines = bytes(damaged).split(b"\n")
            lines.insert(int(rng.integers(len(lines))), lines[int(rng.integers(len(lines)))])
            damaged = bytearray(b"\n".join(lines))
        yield bytes(damaged)


def assert_only_data_errors(root, classes: int, split: str) -> None:
    try:
        ds = open_dataset(str(root), info(classes), split=split)
    except DataError as err:
        assert "\n" not in str(err)
        return
    for i in range(len(ds)):
        if ds[i][0] is None:
            assert ds.why_skipped(i)


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "train_test_split.txt",
                                  "bounding_boxes.txt", "classes.txt"])
def test_damaged_cub_files_give_data_errors_only(cub, name):
    original = (cub / name).read_bytes()
    for content in mutations(original, 60, seed=len(name)):
        (cub / name).write_bytes(content)
        assert_only_data_errors(cub, 2, "all")


@pytest.mark.parametrize("name, compressed", [("cars_test_annos_withlabels.mat", False),
                                              ("cars_test_annos_withlabels.mat", True),
                                              ("devkit/cars_meta.mat", False)])
def test_damaged_cars_files_give_data_errors_only(cars, name, compressed):
    """Also a guard against scipy crashes: a damaged .mat once took the interpreter down."""
    from scipy.io import loadmat, savemat

    if compressed:
        variables = {k: v for k, v in loadmat(str(cars / name)).items() if not k.startswith("__")}
        savemat(cars / name, variables, do_compression=True)
    original = (cars / name).read_bytes()
    for content in mutations(original, 150, seed=int(compressed)):
        (cars / name).write_bytes(content)
        assert_only_data_errors(cars, 3, "test")
