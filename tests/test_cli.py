"""The command line end to end through typer's CliRunner: files, tables, and clear errors."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import write_image_folder
from protobench.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_evaluate_writes_the_three_tables(tiny_ckpt, image_folder, tmp_path):
    out = tmp_path / "out"
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--steps", 3,
                    "--batch-size", 5, "--seed", 4)
    assert result.exit_code == 0, result.output
    assert "PAC (activation change, %)" in result.stdout
    per_image = pd.read_csv(out / "per_image.csv")
    summary = pd.read_csv(out / "summary.csv")
    meta = json.loads((out / "meta.json").read_text())
    assert len(per_image) == 12 and len(summary) == 1
    assert summary.loc[0, "PAC_mean"] == pytest.approx(per_image["PAC"].mean())
    assert summary.loc[0, "acc_before"] == pytest.approx(100 * (per_image.pred_before == per_image.label).mean())
    assert meta["protocol"]["steps"] == 3 and meta["protocol"]["attack"] == "pgd" and meta["seed"] == 4
    assert meta["dataset_images"] == 12 and len(meta["checkpoint_sha256"]) == 64
    assert meta["torch_version"] and meta["protobench_version"]


def test_reference_protocol_and_limit(tiny_ckpt, image_folder, tmp_path):
    out = tmp_path / "ref"
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out,
                    "--protocol", "reference", "--limit", 5)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["protocol"]["attack"] == "noise" and meta["protocol"]["clip"] is False
    assert len(pd.read_csv(out / "per_image.csv")) == 5
    assert meta["distance"] == "float64"
    exact = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "f32",
                   "--protocol", "reference", "--limit", 5, "--distance", "float32")
    assert exact.exit_code == 0, exact.output
    meta = json.loads((tmp_path / "f32" / "meta.json").read_text())
    assert meta["distance"] == "float32" and meta["runtime"]["chunk"] == 1  # one image per call, as the paper's
    resumed = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "f32",
                     "--protocol", "reference", "--limit", 5, "--resume")
    assert resumed.exit_code == 2 and "distance" in resumed.output  # never mixed in one run
    assert_one_line_error(invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--distance", "float16"),
                          "distance", "float64")


def test_refuses_to_overwrite_without_flag(tiny_ckpt, image_folder, tmp_path):
    args = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--steps", 1]
    assert invoke(*args).exit_code == 0
    second = invoke(*args)
    assert second.exit_code != 0 and "--overwrite" in second.output
    assert invoke(*args, "--overwrite").exit_code == 0


def assert_one_line_error(result, *needles):
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note:")]  # progress notes
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("content, needle", [
    (None, "not found"),
    (b"", "empty"),
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML page"),
    (b"\x00\x01garbage" * 10, "not a checkpoint"),
])
def test_bad_checkpoint_files(tmp_path, image_folder, content, needle):
    ckpt = tmp_path / "model.pt"
    if content is not None:
        ckpt.write_bytes(content)
    result = invoke("evaluate", "--ckpt", ckpt, "--data", image_folder, "--out", tmp_path / "o")
    assert_one_line_error(result, needle)
    assert not (tmp_path / "o").exists()


def test_truncated_checkpoint(tmp_path, tiny_ckpt, image_folder):
    data = open(tiny_ckpt, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    assert_one_line_error(invoke("evaluate", "--ckpt", cut, "--data", image_folder, "--out", tmp_path / "o"),
                          "truncated")


def test_checkpoint_of_another_architecture(tmp_path, image_folder, tiny_adapter):
    path = tmp_path / "other.safetensors"
    tiny_adapter.save(str(path))
    from protobench.checkpoints.formats import read_protobench, write_protobench

    _, config, tensors = read_protobench(path)
    write_protobench(path, "tesnet", config, tensors)
    result = invoke("evaluate", "--adapter", "protopnet", "--ckpt", path, "--data", image_folder,
                    "--out", tmp_path / "o")
    assert_one_line_error(result, "'tesnet'", "--adapter tesnet")


def test_unknown_adapter_suggests_a_name(tiny_ckpt, image_folder, tmp_path):
    result = invoke("evaluate", "--adapter", "protopnt", "--ckpt", tiny_ckpt, "--data", image_folder,
                    "--out", tmp_path / "o")
    assert_one_line_error(result, "Did you mean 'protopnet'")


def test_missing_and_empty_data(tiny_ckpt, tmp_path):
    assert_one_line_error(invoke("evaluate", "--ckpt", tiny_ckpt, "--data", tmp_path / "nope",
                                 "--out", tmp_path / "o"), "not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("evaluate", "--ckpt", tiny_ckpt, "--data", tmp_path / "empty",
                                 "--out", tmp_path / "o"), "no class folders")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "notes.txt").write_text("x")
    assert_one_line_error(invoke("evaluate", "--ckpt", tiny_ckpt, "--data", tmp_path / "noimg",
                                 "--out", tmp_path / "o"), "no images")


def test_class_count_mismatch(tiny_ckpt, tmp_path):
    folder = write_image_folder(tmp_path / "five", classes=5, per_class=1)
    assert_one_line_error(invoke("evaluate", "--ckpt", tiny_ckpt, "--data", folder, "--out", tmp_path / "o"),
                          "5 class folders", "3 classes")


def test_undecodable_image_is_skipped_and_recorded(tiny_ckpt, image_folder, tmp_path):
    bad = tmp_path / "data" / "class0" / "broken.png"
    bad.write_bytes(b"this is not a png")
    out = tmp_path / "o"
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--steps", 1)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["evaluated_images"] == 12 and meta["skipped_images"] == [str(bad)]


def test_bad_option_values(tiny_ckpt, image_folder, tmp_path):
    assert_one_line_error(invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--attack", "fgsm"),
                          "unknown attack")
    assert_one_line_error(invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o",
                                 "--device", "tpu"), "device")


def test_adapters_lists_protopnet():
    result = invoke("adapters")
    assert result.exit_code == 0 and "protopnet" in result.stdout


def test_bf16_precision_runs_and_is_recorded(tiny_ckpt, image_folder, tmp_path):
    out = tmp_path / "bf16"
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--steps", 2,
                    "--precision", "bf16")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["runtime"]["precision"] == "bf16" and meta["precision"] == "bf16"
    assert_one_line_error(invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "x",
                                 "--precision", "fp8"), "unknown precision")
    assert not (tmp_path / "x").exists()
