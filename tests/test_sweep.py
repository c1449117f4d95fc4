"""Several models per run: one summary row each, and a broken model becomes an error row."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.cli.app import app
from protobench.run.sweep import pair_adapters, unique_names

runner = CliRunner()


class ExplodingAdapter(ProtoPNetAdapter):
    """Loads fine, fails when run (as a model that runs out of memory would)."""

    def forward(self, x):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")


def test_pair_adapters():
    assert pair_adapters(["a", "b"], [], "protopnet") == [("a", "protopnet"), ("b", "protopnet")]
    assert pair_adapters(["a", "b"], ["tesnet"], "protopnet") == [("a", "tesnet"), ("b", "tesnet")]
    assert pair_adapters(["a", "b"], ["x", "y"], "protopnet") == [("a", "x"), ("b", "y")]
    with pytest.raises(ValueError, match="3 --ckpt but 2 --adapter"):
        pair_adapters(["a", "b", "c"], ["x", "y"], "protopnet")


def test_unique_names():
    assert unique_names(["runs/a/best.pt", "runs/b/best.pt", "c.safetensors", "runs/x/best.pt"]) == \
        ["best", "best-2", "c", "best-3"]


def test_names_stay_unique_after_numbering_and_ignoring_case():
    assert unique_names(["a/best.pt", "b/best.pt", "c/best-2.pt"]) == ["best", "best-2", "best-2-2"]
    assert unique_names(["c/best-2.pt", "a/best.pt", "b/best.pt"]) == ["best-2", "best", "best-3"]
    assert unique_names(["x/Model.pt", "y/model.pt"]) == ["Model", "model-2"]  # one folder on macOS / Windows


def test_names_are_safe_folder_names():
    names = unique_names(["meta.json.pt", "summary.csv.pt", "per_image.csv.pt", "run.json.pt", "..pt", "...pt",
                          ".hidden.pt", "a\\b.pt", "new\nline.pt", b"\xff\xfe.pt".decode("utf-8", "surrogateescape"),
                          "x" * 250 + ".pt"])
    assert names[:4] == ["meta.json-2", "summary.csv-2", "per_image.csv-2", "run.json-2"]
    assert names[4:9] == ["model", "model-2", "hidden", "a_b", "new_line"]
    assert names[9] == "\ufffd\ufffd" and names[10] == "x" * 200
    assert len(set(names)) == len(names)


def test_colliding_checkpoint_names_keep_every_model(tmp_path, tiny_ckpt, image_folder):
    paths = []
    for i, rel in enumerate(["a/best.pt", "b/best.pt", "c/best-2.pt", "meta.json.pt"]):
        path = tmp_path / rel
        path.parent.mkdir(exist_ok=True)
        ProtoPNetAdapter.from_config(tiny_config(), seed=i).save(str(path.with_suffix(".safetensors")))
        path.with_suffix(".safetensors").rename(path)
        paths += ["--ckpt", path]
    out = tmp_path / "o"
    args = ["evaluate", *paths, "--adapter", "protopnet", "--data", image_folder, "--steps", 1, "--limit", 2,
            "--out", out]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary["model"].tolist() == ["best", "best-2", "best-2-2", "meta.json-2"]
    assert summary["PAC_mean"].nunique() == 4  # four different models, none replaced by another
    assert json.loads((out / "meta.json").read_text())["models"][3]["dir"] == "meta.json-2"
    for name in summary["model"]:
        assert json.loads((out / name / "meta.json").read_text())["model"] == name


def test_several_models_one_broken(tmp_path, tiny_ckpt, image_folder):
    other = tmp_path / "other.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(), seed=1).save(str(other))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"<!DOCTYPE html><html>login</html>")
    out = tmp_path / "sweep"
    common = ["--data", image_folder, "--steps", 2, "--limit", 6]
    result = runner.invoke(app, [str(a) for a in [
        "evaluate", "--ckpt", tiny_ckpt, "--ckpt", broken, "--ckpt", other, "--ckpt", tiny_ckpt,
        "--adapter", "protopnet", "--adapter", "protopnet", "--adapter", "protopnet",
        "--adapter", "test_sweep:ExplodingAdapter", "--out", out, *common]])
    assert result.exit_code == 1, result.output
    assert "2 of 4 models failed" in " ".join(result.stderr.split())
    summary = pd.read_csv(out / "summary.csv")
    assert summary["model"].tolist() == ["tiny", "broken", "other", "tiny-2"]
    assert summary["adapter"].tolist()[-1] == "test_sweep:ExplodingAdapter"
    assert summary["error"].isna().tolist() == [True, False, True, False]
    assert "HTML page" in summary.loc[1, "error"]
    assert summary.loc[3, "error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert summary.loc[[1, 3], ["PLC_mean", "PAC_mean", "acc_before", "images"]].isna().all().all()
    meta = json.loads((out / "meta.json").read_text())
    assert [m["dir"] for m in meta["models"]] == ["tiny", "broken", "other", "tiny-2"]

    single = tmp_path / "single"
    assert runner.invoke(app, [str(a) for a in ["evaluate", "--ckpt", other, "--out", single, *common]]).exit_code == 0
    assert (single / "per_image.csv").read_bytes() == (out / "other" / "per_image.csv").read_bytes()
    alone = pd.read_csv(single / "summary.csv")
    assert summary.loc[2, "PAC_mean"] == pytest.approx(alone.loc[0, "PAC_mean"])
    assert summary.loc[0, "PAC_mean"] != pytest.approx(summary.loc[2, "PAC_mean"])  # different weights

    again = runner.invoke(app, [str(a) for a in ["evaluate", "--ckpt", tiny_ckpt, "--ckpt", other, "--out", out,
                                                 *common]])
    assert again.exit_code == 2 and "--resume" in again.stderr  # a finished sweep is not silently replaced


def test_an_interrupted_sweep_resumes_to_the_same_tables(tmp_path, tiny_ckpt, image_folder, monkeypatch):
    from protobench.run import benchmark

    other = tmp_path / "other.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(), seed=1).save(str(other))
    third = tmp_path / "third.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(), seed=2).save(str(third))
    models = ["--ckpt", tiny_ckpt, "--ckpt", other, "--ckpt", third, "--data", image_folder, "--steps", 2,
              "--batch-size", 4]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert runner.invoke(app, [str(a) for a in ["evaluate", *models, "--out", full]]).exit_code == 0
    real, calls = benchmark.evaluate_batch, []

    def interrupt(*args, **kwargs):  # Ctrl-C in the second batch of the second model
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark, "evaluate_batch", interrupt)
    stopped = runner.invoke(app, [str(a) for a in ["evaluate", *models, "--out", cut]])
    assert stopped.exit_code == 130 and "--resume" in stopped.stderr
    monkeypatch.undo()
    assert (cut / "tiny" / "meta.json").exists() and not (cut / "third").exists()
    rerun = runner.invoke(app, [str(a) for a in ["evaluate", *models, "--out", cut]])
    assert rerun.exit_code == 2 and "tiny/, other/" in rerun.stderr and "--resume" in rerun.stderr
    resumed = runner.invoke(app, [str(a) for a in ["evaluate", *models, "--out", cut, "--resume"]])
    assert resumed.exit_code == 0, resumed.output
    for name in ("summary.csv", "tiny/per_image.csv", "other/per_image.csv", "third/summary.csv"):
        assert (full / name).read_bytes() == (cut / name).read_bytes(), name


class BuggyAdapter(ProtoPNetAdapter):
    """Loads fine, then fails as a bug would."""

    def forward(self, x):
        return {}["maps"]


def test_a_bug_in_one_model_keeps_its_traceback(tmp_path, tiny_ckpt, image_folder):
    out = tmp_path / "o"
    result = runner.invoke(app, [str(a) for a in [
        "evaluate", "--ckpt", tiny_ckpt, "--ckpt", tiny_ckpt, "--adapter", "protopnet",
        "--adapter", "test_sweep:BuggyAdapter", "--data", image_folder, "--steps", 1, "--limit", 2, "--out", out]])
    assert result.exit_code == 1, result.output
    error = pd.read_csv(out / "summary.csv").loc[1, "error"]
    assert error.startswith("KeyError: 'maps' (a bug in protobench") and str(out / "tiny-2") in error
    assert "in forward" in (out / "tiny-2" / "protobench-traceback.txt").read_text()
