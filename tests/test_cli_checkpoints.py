"""The command line with original checkpoints: auto-detection, convert, and one-line errors for bad files."""

import json

import pytest
import torch

from conftest import write_image_folder
from protobench.models.lookup import get_adapter
from test_cli import assert_one_line_error, invoke
from test_originals import write_pipnet, write_ppnet, write_prototree
from test_pickles import SystemCall


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "data", classes=3, per_class=2, size=36)


def test_evaluate_detects_an_original_pickle(tmp_path, folder):
    path, _ = write_ppnet(tmp_path)
    out = tmp_path / "out"
    result = invoke("evaluate", "--ckpt", path, "--data", folder, "--out", out, "--steps", 2)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["adapter"] == "protopnet" and meta["model_info"]["input_size"] == 32


def html_page(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head></html>")
    return path, ["HTML page"]


def empty_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    return path, ["empty"]


def truncated_pickle(tmp_path):
    whole, _ = write_ppnet(tmp_path)
    path = tmp_path / "cut.pth"
    path.write_bytes(whole.read_bytes()[:5000])
    return path, ["truncated or damaged"]


def truncated_legacy_pickle(tmp_path):
    whole, _ = write_ppnet(tmp_path, backbone="vgg", legacy=True)
    path = tmp_path / "cut.pth"
    path.write_bytes(whole.read_bytes()[:3000])
    return path, ["truncated or damaged"]


def hostile_pickle(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model_state_dict": {}, "x": SystemCall(tmp_path / "pwned")}, path)
    return path, ["refusing to load", "system"]


def prototree_given_to_tesnet(tmp_path):
    directory, _ = write_prototree(tmp_path)
    return directory / "model.pth", ["holds a ProtoTree checkpoint, not 'tesnet'", "--adapter prototree"]


@pytest.mark.parametrize("make", [html_page, empty_file, truncated_pickle, truncated_legacy_pickle, hostile_pickle,
                                  prototree_given_to_tesnet])
def test_bad_files_get_one_line(tmp_path, folder, make):
    path, needles = make(tmp_path)
    adapter = ["--adapter", "tesnet"] if make is prototree_given_to_tesnet else []
    result = invoke("evaluate", *adapter, "--ckpt", path, "--data", folder, "--out", tmp_path / "o")
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "o").exists() and not (tmp_path / "pwned").exists()


def test_ambiguous_state_dict_asks_for_the_adapter(tmp_path, folder):
    _, net = write_ppnet(tmp_path, backbone="vgg")
    path = tmp_path / "weights.pth"
    torch.save(net.state_dict(), path)
    result = invoke("evaluate", "--ckpt", path, "--data", folder, "--out", tmp_path / "o")
    assert_one_line_error(result, "--adapter protopnet or --adapter tesnet")


def test_convert_prototree_then_evaluate_without_pickle(tmp_path, folder):
    directory, tree = write_prototree(tmp_path, prune=True)
    out = tmp_path / "tree.safetensors"
    result = invoke("convert", directory / "model.pth", out)
    assert result.exit_code == 0, result.output
    assert "prototree" in result.stdout and "5 prototypes" in result.stdout
    converted = get_adapter("auto").load(str(out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(converted(x)[1], torch.log(tree(x)), rtol=1e-4, atol=1e-5)
    assert invoke("evaluate", "--ckpt", out, "--data", folder, "--out", tmp_path / "o", "--steps", 1).exit_code == 0
    assert_one_line_error(invoke("convert", directory / "model.pth", out), "already exists", "--overwrite")
    assert invoke("convert", directory / "model.pth", out, "--overwrite").exit_code == 0


def test_convert_passes_adapter_options_and_checks_the_suffix(tmp_path):
    path, _ = write_pipnet(tmp_path)
    out = tmp_path / "pip.safetensors"
    result = invoke("convert", path, out, "--adapter", "pipnet", "--adapter-option", "stride1_above=6")
    assert result.exit_code == 0, result.output
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"])["backbone_kwargs"]["stride1_above"] == 6
    assert meta["source"] == "net_trained_last" and len(meta["source_sha256"]) == 64
    assert_one_line_error(invoke("convert", path, tmp_path / "pip.pt"), "must end in .safetensors")
