"""Several models per run: one summary row each, and a broken model becomes an error row."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.cli import app
from protobench.sweep import pair_adapters, unique_names

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
    from protobench import benchmark

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
