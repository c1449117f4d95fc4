"""ProtoShapes: deterministic, as designed, in protobench's item format, exportable, loadable by name."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.cli.app import app
from protobench.data.imagelist import ImageFolder, load_image
from protobench.demo.shapes import COLOURS, ProtoShapes, ShapesDesign, draw, export
from protobench.errors import DataError
from protobench.run.evaluate import load_dataset

runner = CliRunner()


def test_images_are_a_function_of_seed_split_and_index():
    design = ShapesDesign()
    same = [draw(design, "train", 7)[0] for _ in range(2)]
    assert np.array_equal(*same)
    assert not np.array_equal(same[0], draw(design, "test", 7)[0])
    assert not np.array_equal(same[0], draw(ShapesDesign(seed=1), "train", 7)[0])
    assert not np.array_equal(same[0], draw(design, "train", 8)[0])


def test_labels_cycle_and_class_names_sort_in_label_order():
    data = ProtoShapes("train", n=13)
    assert data.labels == [i % 6 for i in range(13)]
    assert sorted(data.classes) == data.classes and len(data.classes) == 6
    assert data.classes[0] == "0-red-horizontal" and data.classes[5] == "5-blue-vertical"
    assert data.paths[12] == "protoshapes/train/00012.png"


def stripe_direction(patch: np.ndarray) -> str:
    """'horizontal' when the pixels change only from row to row, 'vertical' when only along rows."""
    down = np.abs(np.diff(patch.astype(int), axis=0)).sum()
    across = np.abs(np.diff(patch.astype(int), axis=1)).sum()
    assert min(down, across) == 0 and max(down, across) > 0
    return "horizontal" if across == 0 else "vertical"


@pytest.mark.parametrize("index", range(12))
def test_each_image_holds_the_designed_square_ring_frame_and_field(index):
    design = ShapesDesign()
    img, label = draw(design, "test", index)
    colour = np.array(list(COLOURS.values())[label % 3]) * 255
    # the square: the 12 x 12 pixels far from grey, coloured as its class says
    far = np.abs(img.astype(int) - img[..., :1].astype(int)).max(axis=2) > 40
    rows, cols = np.nonzero(far)
    top, left = rows.min(), cols.min()
    assert far.sum() == design.part ** 2 and rows.max() - top == cols.max() - left == design.part - 1
    assert np.abs(img[top, left] - colour).max() <= design.colour_jitter * 255 + 1
    # the ring: one flat grey around it
    ring = img[max(top - design.ring, 0):top, left:left + design.part]
    assert ring.size == 0 or (ring == ring[0, 0]).all()
    # the frame's stripes have the class orientation, the field beyond it the other one
    orientation = "horizontal" if label < 3 else "vertical"
    other = "vertical" if label < 3 else "horizontal"
    pad = design.ring + design.frame
    bands = {"above": img[max(top - pad, 0):max(top - design.ring, 0), left:left + design.part],
             "below": img[top + design.part + design.ring:top + design.part + pad, left:left + design.part]}
    band = max(bands.values(), key=lambda b: b.shape[0])
    assert band.shape[0] >= design.frame // 2  # the square leaves room for half a frame on one side at least
    assert stripe_direction(band[..., 0]) == orientation
    corner = img[:8, :8] if top > pad + 8 or left > pad + 8 else img[-8:, -8:]
    assert stripe_direction(corner[..., 0]) == other


def test_items_are_normalized_images_label_and_index():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    data = ProtoShapes("test", mean, std, n=3)
    x, y, i = data[2]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and (y, i) == (2, 2)
    pixels = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    assert torch.allclose(pixels * 255, torch.from_numpy(data.pixels(2)).permute(2, 0, 1).float(), atol=1e-3)


def test_export_writes_an_image_folder_that_decodes_to_the_same_tensors(tmp_path):
    assert export(tmp_path / "shapes", "test", n=8) == 8
    folder = ImageFolder(tmp_path / "shapes", 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    data = ProtoShapes("test", n=8)
    assert folder.classes == data.classes and len(folder) == 8
    x = load_image(tmp_path / "shapes" / data.classes[4] / "00004.png", 64, data.mean, data.std)
    assert torch.equal(x, data[4][0])
    with pytest.raises(DataError, match="not an empty directory"):
        export(tmp_path / "shapes", "test", n=2)


def test_demo_export_command(tmp_path):
    result = runner.invoke(app, ["demo", "export", str(tmp_path / "out"), "--split", "train", "--n", "7"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").rglob("*.png"))) == 7
    bad = runner.invoke(app, ["demo", "export", str(tmp_path / "other"), "--split", "val"])
    assert bad.exit_code == 2 and "unknown protoshapes split 'val'" in bad.output


def test_protoshapes_is_a_reserved_data_name():
    info = ProtoPNetAdapter.from_config(tiny_config(num_classes=6, num_prototypes=12, img_size=64)).info
    test, paths = load_dataset("protoshapes", info)
    train, _ = load_dataset("protoshapes:train", info)
    assert paths[0] == "protoshapes/test/00000.png"
    assert test.split == "test" and train.split == "train" and len(train) > len(test)
    with pytest.raises(DataError, match="unknown protoshapes split"):
        load_dataset("protoshapes:val", info)
    small = ProtoPNetAdapter.from_config(tiny_config(num_classes=6, num_prototypes=12)).info  # 32 px
    with pytest.raises(DataError, match="64 px but the model takes 32 px"):
        load_dataset("protoshapes", small)


def test_evaluate_wants_both_ckpt_and_data_or_neither(tiny_ckpt):
    result = runner.invoke(app, ["evaluate", "--ckpt", tiny_ckpt])
    assert result.exit_code == 2 and "or neither to run the built-in demo" in result.output
