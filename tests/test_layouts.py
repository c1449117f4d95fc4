"""The layout registry: a toy layout from a test module works end to end; the built-ins are found
in their order; ProtoShapes is a layout like the others; run/ and train/ name no layout."""

import ast
import importlib
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from datasets_fixtures import write_cub
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.data.layouts import LAYOUTS, Layout, Splits, default_split, find, open_dataset
from protobench.demo import demo_checkpoint
from protobench.demo.shapes import ProtoShapes, export
from protobench.errors import DataError
from protobench.registry import RegistryError
from protobench.train.data import train_split
from test_cli import assert_one_line_error, invoke

DOC = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"
PACKAGE = Path(__file__).resolve().parents[1] / "protobench"
TEST_IMAGES, TRAIN_IMAGES = 8, 6


def doc_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (example,) = [b for b in blocks if b.startswith('"""mylab_layout.py')]
    return example


@pytest.fixture
def csv_layout(tmp_path, monkeypatch):
    """docs/datasets.md's example layout, imported from a module of its own: importing it registers 'csv'."""
    (tmp_path / "mylab_layout.py").write_text(doc_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mylab_layout", raising=False)
    import mylab_layout  # noqa: F401

    yield LAYOUTS.get("csv")
    LAYOUTS.remove("csv")
    sys.modules.pop("mylab_layout", None)


@pytest.fixture
def csv_data(tmp_path) -> Path:
    """ProtoShapes images on disk, listed in labels.csv: 8 test images, 6 train images.

    The directory also looks like an ImageFolder (test/ and train/ are folders), so only the
    detection order makes it a csv dataset."""
    root = tmp_path / "listed"
    export(root / "test", "test", n=TEST_IMAGES)
    export(root / "train", "train", n=TRAIN_IMAGES)
    rows = ["image,label,split"]
    for split, n in (("test", TEST_IMAGES), ("train", TRAIN_IMAGES)):
        shapes = ProtoShapes(split, n=n)
        rows += [f"{split}/{shapes.classes[label]}/{i:05d}.png,{shapes.classes[label]},{split}"
                 for i, label in enumerate(shapes.labels)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def demo_info():
    return ProtoPNetAdapter.load(demo_checkpoint()).info


def test_doc_example_is_short():
    assert len(doc_example().strip().splitlines()) < 45


def test_a_toy_layout_is_detected_opened_and_has_its_splits(csv_layout, csv_data):
    found = find(str(csv_data))
    assert (found.name, found.layout, found.root) == ("csv", csv_layout, csv_data)  # before ImageFolder
    assert csv_layout.splits(csv_data) == Splits(("test", "train"), evaluate="test", train="train")
    assert default_split(str(csv_data)) == "test" and train_split(str(csv_data), None, None) == "train"
    test = open_dataset(str(csv_data), demo_info(), layout="csv")
    assert (test.kind, test.split, len(test)) == ("csv", "test", TEST_IMAGES)
    assert test.labels == [i % 6 for i in range(TEST_IMAGES)]  # ProtoShapes: image i has label i mod 6
    train = open_dataset(str(csv_data), demo_info(), layout="csv", split="train")
    assert len(train) == TRAIN_IMAGES and train.paths[1].endswith("train/1-green-horizontal/00001.png")
    assert find(str(csv_data), "imagefolder").name == "imagefolder"  # --dataset still picks the other
    with pytest.raises(DataError, match="unknown --split 'val' for labels.csv folder: use test or train"):
        open_dataset(str(csv_data), demo_info(), split="val")


def test_a_toy_layout_runs_evaluate_through_the_cli(csv_layout, csv_data, tmp_path):
    out = tmp_path / "out"
    result = invoke("evaluate", "--ckpt", demo_checkpoint(), "--data", csv_data, "--dataset", "csv",
                    "--out", out, "--steps", 1, "--limit", 3)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["dataset_kind"], meta["split"], meta["dataset_images"]) == ("csv", "test", TEST_IMAGES)
    assert meta["dataset_fingerprint"]["files"] == TEST_IMAGES + 1  # the split's images and labels.csv
    rows = pd.read_csv(out / "per_image.csv")
    assert len(rows) == 3
    for path, label in zip(rows["path"], rows["label"]):  # the label is the class folder's leading number
        assert Path(path).parent.parent == csv_data / "test" and label == int(Path(path).parent.name[0])


def test_finetune_trains_on_the_toy_layouts_train_split(csv_layout, csv_data, tmp_path):
    out = tmp_path / "ft"
    result = invoke("finetune", "--ckpt", demo_checkpoint(), "--data", csv_data, "--out", out, "--no-eval",
                    "--epochs", 0, "--last-epochs", 0, "--no-push")
    assert result.exit_code == 0, result.output
    identity = json.loads((out / "finetune.json").read_text())["identity"]
    assert identity["train_images"] == TRAIN_IMAGES  # not the TEST_IMAGES of the evaluation default


def test_a_layout_cannot_take_a_built_in_name_or_be_something_else():
    with pytest.raises(RegistryError, match="'cub' is already registered"):
        LAYOUTS.add("cub", Layout())
    with pytest.raises(RegistryError, match="must be an instance of protobench.data.layouts.Layout"):
        LAYOUTS.add("not-a-layout", object())
    assert "not-a-layout" not in LAYOUTS and LAYOUTS.group == "protobench.datasets"


def test_protoshapes_is_a_layout_whose_name_may_carry_the_split(tmp_path, monkeypatch):
    assert find("protoshapes").name == "protoshapes"
    assert default_split("protoshapes") == "test" and train_split("protoshapes", None, None) == "train"
    assert train_split("protoshapes:test", None, None) == "test"  # the split in the name wins
    write_cub(tmp_path / "protoshapes")  # a directory of the reserved name: still the demo data
    monkeypatch.chdir(tmp_path)
    assert find("protoshapes").name == "protoshapes" and find("./protoshapes").name == "cub"
    info = demo_info()
    assert open_dataset("protoshapes:train", info).split == "train"
    with pytest.raises(DataError, match="unknown --split 'test' for ProtoShapes: use train"):
        open_dataset("protoshapes:train", info, split="test")
    with pytest.raises(DataError, match="does not hold the ProtoShapes layout"):
        open_dataset(str(tmp_path), info, layout="protoshapes")


def test_unknown_dataset_option_is_one_line_with_a_suggestion(tmp_path, image_folder, tiny_ckpt):
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--dataset", "imagefoldr",
                    "--out", tmp_path / "o")
    assert_one_line_error(result, "unknown dataset layout 'imagefoldr'", "Did you mean 'imagefolder'")
    assert not (tmp_path / "o").exists()  # refused as the option is read
    result = invoke("finetune", "--ckpt", tiny_ckpt, "--data", image_folder, "--dataset", "cu", "--out", tmp_path / "f")
    assert_one_line_error(result, "unknown dataset layout 'cu'", "Did you mean 'cub'")
    assert not (tmp_path / "f").exists()


def test_the_cli_help_names_every_built_in_layout():
    help_text = importlib.import_module("protobench.cli.app").DATASET_HELP
    named = re.findall(r"[a-z]+", help_text.split(" or ")[0].split(":")[1])
    assert sorted(named) == LAYOUTS.names()


def test_the_layout_table_in_the_docs_lists_every_built_in_layout():
    text = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    documented = re.findall(r"^\| `([a-z]+)` \|", text.split("| `--dataset` |")[1].split("\n\n")[0], flags=re.M)
    assert sorted(documented) == sorted(n for n, source in LAYOUTS.sources().items() if source == "built-in")


def test_run_and_train_name_no_layout():
    """The registry decides what a --data value is: no string in the code that runs or trains is a
    layout's name."""
    for folder in ("run", "train"):
        for path in (PACKAGE / folder).glob("*.py"):
            for text in code_strings(path):  # 'cub', 'protoshapes:train', ... (a message may say CUB-200-2011)
                assert not re.match(r"(protoshapes|imagefolder|cub|cars)(:|$)", text.lower()), f"{path.name}: {text!r}"


def code_strings(path: Path) -> list[str]:
    """Every string constant in a module except its docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]
