"""Bad input to the Python API raises a ProtobenchError subclass with the CLI's one-line message, its
traceback starting at the caller's line rather than inside the loop."""

from __future__ import annotations

import traceback

import pytest
import torch
from typer.testing import CliRunner

import protobench
from protobench.cli.app import app


def raised(fn, *args, **kwargs) -> protobench.ProtobenchError:
    with pytest.raises(protobench.ProtobenchError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert "\n" not in str(err)
    frames = [frame.filename for frame in traceback.extract_tb(err.__traceback__)]
    assert not any("/protobench/run/" in f or "/protobench/core/" in f for f in frames), frames
    return err


def cli_error(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0].removeprefix("error: ")


class Items(torch.utils.data.Dataset):
    def __init__(self, make, n=6):
        self.make, self.n = make, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.make(i)


@pytest.fixture
def model(tiny_ckpt):
    return protobench.load(tiny_ckpt, device="cpu")


def evaluate(model, data, **kwargs):
    return protobench.evaluate(model, data, steps=1, progress=False, **kwargs)


@pytest.mark.parametrize("make, words", [
    (lambda i: (torch.zeros(3, 28, 28), 0), "float32 tensor of shape (3, 28, 28); the model takes float tensors "
                                            "of shape (3, 32, 32)"),
    (lambda i: (torch.zeros(32, 32, 3), 0), "shape (32, 32, 3)"),
    (lambda i: (torch.zeros(3, 32, 32, dtype=torch.uint8), 0), "torch.uint8 tensor"),
    (lambda i: torch.zeros(3, 32, 32), "is a Tensor, not an (image, label) pair"),
    (lambda i: ("image.png", 0), "is a str;"),
])
def test_a_dataset_yielding_wrong_images(model, make, words):
    err = raised(evaluate, model, Items(make))
    assert isinstance(err, protobench.DataError) and words in str(err) and str(err).startswith("item 0 ")


@pytest.mark.parametrize("label", [3, -1, 1.5, "cat"])
def test_labels_out_of_range_found_inside_the_loop(model, label):
    """Item 4 is bad: found in the loop's second batch, still one line and a short traceback."""
    data = Items(lambda i: (torch.zeros(3, 32, 32), label if i == 4 else 0))
    err = raised(evaluate, model, data, batch_size=2)
    assert isinstance(err, protobench.DataError)
    assert str(err) == (f"item 4 of the Items dataset has label {label!r}; the model has 3 classes: labels must be "
                        "whole numbers from 0 to 2")


class NotAPrototypeNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


class HalfProtocol(NotAPrototypeNet):
    """Has an identity, but its forward returns logits only."""

    img_size = 32
    prototype_class_identity = torch.eye(2)


@pytest.mark.parametrize("module, words", [
    (NotAPrototypeNet(), "is no supported model family's model"),
    (HalfProtocol(), "its forward returns Tensor, not the pair (maps, logits)"),
    (torch.optim.SGD, "takes a torch.nn.Module"),
])
def test_a_module_of_no_family_not_following_the_protocol(module, words):
    err = raised(protobench.wrap, module)
    assert isinstance(err, protobench.AdapterError) and words in str(err)
    assert "docs/python.md" in str(err) or "protobench.load" in str(err)


def test_the_cli_messages(tiny_ckpt, image_folder, tmp_path, model):
    common = ("--ckpt", tiny_ckpt, "--data", image_folder, "--steps", 1)
    for option, value, kwargs in (("--limit", 0, {"limit": 0}), ("--eps", -1, {"eps": -1.0}),
                                  ("--protocol", "nope", {"protocol": "nope"}), ("--metrics", "nope", {"metrics": "nope"}),
                                  ("--batch-size", 0, {"batch_size": 0})):
        expected = cli_error("evaluate", *common, "--out", tmp_path / option, option, value)
        assert str(raised(evaluate, model, image_folder, **kwargs)) == expected, option
    out = tmp_path / "done"
    evaluate(model, image_folder, out=out)
    assert str(raised(evaluate, model, image_folder, out=out)) == cli_error("evaluate", *common, "--out", out)
    assert str(raised(evaluate, model, tmp_path / "none")) == cli_error("evaluate", "--ckpt", tiny_ckpt, "--data",
                                                                        tmp_path / "none", "--out", tmp_path / "o")
    missing = tmp_path / "missing.pth"
    assert str(raised(protobench.load, missing)) == cli_error("evaluate", "--ckpt", missing, "--data", image_folder)


def test_unknown_options(model, image_folder):
    err = raised(evaluate, model, image_folder, stepz=3)
    assert isinstance(err, protobench.OptionError) and "evaluate has no option 'stepz'; the protocol's options" in str(err)


def test_part_metrics_need_annotations(model):
    data = Items(lambda i: (torch.zeros(3, 32, 32), 0))
    err = raised(evaluate, model, data, metrics="misalignment,consistency")
    assert isinstance(err, protobench.DataError) and "which this in-memory dataset lacks" in str(err)


def test_other_bad_data(model):
    assert "give a dataset directory, a torch Dataset" in str(raised(evaluate, model, [1, 2, 3]))
    assert "is empty" in str(raised(evaluate, model, Items(lambda i: None, n=0)))
    assert "give the data to evaluate on" in str(raised(protobench.evaluate, model))
