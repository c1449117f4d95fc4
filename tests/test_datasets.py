"""Dataset layouts: CUB and Cars crops checked against boxes worked out by hand, detection, errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config, write_image_folder
from datasets_fixtures import write_cars, write_cub
from protobench.models.adapter import ModelInfo
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.cli.app import app
from protobench.data.imagelist import Unusable, pixel_box
from protobench.data.layouts import find, open_dataset
from protobench.errors import DataError
from protobench.run.provenance import dataset_fingerprint


def info(size: int, classes: int = 2) -> ModelInfo:
    return ModelInfo(input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=classes,
                     num_prototypes=1, similarity="log")


def assert_crop(x: torch.Tensor, left: int, top: int) -> None:
    """x: (3, S, S) from a coordinate image cropped at (left, top), not resized: red = x, green = y."""
    size = x.shape[-1]
    cols = torch.arange(size, dtype=torch.float32)
    assert torch.equal(torch.round(x[0] * 255), (left + cols).expand(size, size))
    assert torch.equal(torch.round(x[1] * 255), (top + cols).view(-1, 1).expand(size, size))


@pytest.fixture
def cub(tmp_path):
    return write_cub(tmp_path / "CUB_200_2011")


@pytest.fixture
def cars(tmp_path):
    return write_cars(tmp_path / "stanford_cars")


def test_pixel_box_by_hand():
    assert pixel_box((3.0, 5.0, 11.0, 13.0), (20, 16)) == (3, 5, 11, 13)
    assert pixel_box((2.5, 4.2, 10.5, 12.2), (20, 16)) == (2, 4, 11, 13)  # every pixel the box touches
    assert pixel_box((15.0, 10.0, 45.0, 40.0), (20, 16)) == (15, 10, 20, 16)  # clamped to the image
    assert pixel_box((-4.0, -1.0, 3.0, 2.0), (20, 16)) == (0, 0, 3, 2)
    assert pixel_box((19.5, 3.0, 19.5, 3.0), (20, 16)) == (19, 3, 20, 4)  # never empty


@pytest.mark.parametrize("box", [(25.0, 3.0, 30.0, 9.0), (3.0, 16.0, 9.0, 20.0), (-9.0, 3.0, 0.0, 9.0),
                                 (3.0, -9.0, 9.0, 0.0)])
def test_a_box_outside_the_image_is_unusable_not_an_edge_pixel(box):
    with pytest.raises(Unusable, match="lies outside the 20 x 16 image"):
        pixel_box(box, (20, 16))


def test_cub_test_split_is_cropped_to_its_boxes(cub):
    ds = open_dataset(str(cub), info(8))
    assert (ds.kind, ds.split, len(ds)) == ("cub", "test", 3)
    assert [p.rsplit("/", 1)[-1] for p in ds.paths] == ["bird_0001.png", "bird_0003.png", "bird_0005.png"]
    assert ds.labels == [0, 1, 1]  # class ids 1, 2, 2 -> 0-based
    assert ds.classes == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert ds.boxes == [(3.0, 5.0, 11.0, 13.0), (2.5, 4.2, 10.5, 12.2), (15.0, 10.0, 45.0, 40.0)]
    x, label, index = ds[0]
    assert (label, index) == (0, 0)
    assert_crop(x, left=3, top=5)  # x=3 y=5 w=8 h=8 -> an 8 x 8 crop at (3, 5)
    assert torch.all(torch.round(x[2] * 255) == 1)  # blue = image id 1
    x9, _, _ = open_dataset(str(cub), info(9))[1]
    assert_crop(x9, left=2, top=4)  # x=2.5 y=4.2 w=h=8 -> pixels 2..10 x 4..12: 9 x 9


def test_cub_splits(cub):
    train = open_dataset(str(cub), info(8), split="train")
    assert [p[-8:] for p in train.paths] == ["0002.png", "0004.png"] and train.labels == [0, 1]
    assert len(open_dataset(str(cub), info(8), split="all")) == 5
    with pytest.raises(DataError, match="test, train or all"):
        open_dataset(str(cub), info(8), split="val")


def test_cars_devkit_annotations_and_crops(cars):
    ds = open_dataset(str(cars), info(8, 3))
    assert (ds.kind, ds.split, len(ds)) == ("cars", "test", 3)
    assert ds.classes == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Bentley Mulsanne Sedan 2011"]
    assert ds.labels == [1, 0, 2]  # classes 2, 1, 3 (1-based)
    # 1-based inclusive (4, 2)-(11, 9) is 0-based pixels 3..10 x 1..8: the half-open box (3, 1, 11, 9)
    assert ds.boxes == [(3.0, 1.0, 11.0, 9.0), (0.0, 0.0, 20.0, 16.0), (9.0, 4.0, 17.0, 12.0)]
    assert_crop(ds[0][0], left=3, top=1)
    assert_crop(ds[2][0], left=9, top=4)
    train = open_dataset(str(cars), info(8, 3), split="train")
    assert train.paths[0].endswith("cars_train/00001.png") and train.labels == [0]


def test_cars_test_labels_may_sit_in_the_devkit(tmp_path):
    root = write_cars(tmp_path / "cars", labels_in_devkit=True)
    assert open_dataset(str(root), info(8, 3)).labels == [1, 0, 2]
    (root / "devkit" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match="cars_test_annos_withlabels.mat"):
        open_dataset(str(root), info(8, 3))


def detected(data) -> tuple[str, object]:
    found = find(str(data))
    return found.name, found.root


def test_detection(tmp_path, cub, cars):
    assert detected(cub) == ("cub", cub)
    assert detected(cub.parent) == ("cub", cub)  # the folder the archive was unpacked into
    assert detected(cars) == ("cars", cars)
    assert detected(tmp_path) == ("cub", cub)  # holds CUB_200_2011/ and stanford_cars/: CUB comes first
    folder = Path(write_image_folder(tmp_path / "folder", classes=2, per_class=1))
    assert detected(folder) == ("imagefolder", folder)
    assert open_dataset(str(cub), info(8, 1), layout="imagefolder").kind == "imagefolder"  # forced: images/ is a class


@pytest.mark.parametrize("layout, needle", [("cars", "cars_meta.mat"), ("cub", "bounding_boxes.txt"),
                                            ("coco", "unknown dataset layout 'coco'"), ("cu", "Did you mean 'cub'"),
                                            ("protoshapes", "does not hold the ProtoShapes layout")])
def test_forced_layout_must_match_the_data(tmp_path, layout, needle):
    folder = write_image_folder(tmp_path / "folder", classes=2, per_class=1)
    with pytest.raises(DataError, match=needle):
        open_dataset(folder, info(8), layout=layout)


def test_imagefolder_has_no_split(tmp_path):
    folder = write_image_folder(tmp_path / "folder", classes=2, per_class=1)
    with pytest.raises(DataError, match="no splits"):
        open_dataset(folder, info(8), split="test")


def test_broken_annotations(cub):
    (cub / "train_test_split.txt").write_text("1 0\n")
    with pytest.raises(DataError, match="no line for image id"):
        open_dataset(str(cub), info(8))
    (cub / "train_test_split.txt").unlink()
    with pytest.raises(DataError, match="missing annotation file"):
        open_dataset(str(cub), info(8))


def test_fingerprint_follows_files_not_location(tmp_path, cub):
    first = open_dataset(str(cub), info(8))
    copy = shutil.copytree(cub.parent, tmp_path / "elsewhere")
    second = open_dataset(str(copy), info(8))
    fp = dataset_fingerprint(first.files, first.root)
    assert fp == dataset_fingerprint(second.files, second.root)
    assert fp["files"] == 3 + 5  # the split's images and the five annotation files
    with open(second.paths[1], "ab") as f:
        f.write(b"\0")
    assert dataset_fingerprint(second.files, second.root)["sha256"] != fp["sha256"]


runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_evaluate_on_cub_and_cars(tmp_path, cub, cars, tiny_ckpt):
    two = tmp_path / "two.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(num_classes=2, num_prototypes=4), seed=0).save(str(two))
    result = run("evaluate", "--ckpt", two, "--data", cub.parent, "--out", tmp_path / "o1", "--steps", 1)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "o1" / "meta.json").read_text())
    assert (meta["dataset_kind"], meta["split"], meta["evaluated_images"]) == ("cub", "test", 3)
    result = run("evaluate", "--ckpt", tiny_ckpt, "--data", cars, "--out", tmp_path / "o2", "--steps", 1,
                 "--split", "train")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o2" / "meta.json").read_text())["evaluated_images"] == 1
    result = run("evaluate", "--ckpt", tiny_ckpt, "--data", cub, "--out", tmp_path / "o3")
    assert result.exit_code == 2 and "2 classes (cub)" in result.stderr


def test_undecodable_image_warns_and_strict_stops(tmp_path, tiny_ckpt, image_folder):
    bad = tmp_path / "data" / "class1" / "broken.png"
    bad.write_bytes(b"not a png")
    result = run("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--steps", 1)
    assert result.exit_code == 0, result.output
    assert (f"skipped image {bad}: the image does not decode (UnidentifiedImageError: cannot identify image file"
            in " ".join(result.stderr.split()))
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["skipped_images"] == [str(bad)]
    strict = run("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "s", "--strict",
                 "--steps", 1)
    errors = [line for line in strict.stderr.splitlines() if line.startswith("error:")]
    assert strict.exit_code == 2 and len(errors) == 1 and "Traceback" not in strict.output
    assert str(bad) in " ".join(strict.stderr.split()) and "--strict" in strict.stderr
