"""A metric and an attack added from this test module alone, with no other change, go end to end:
per_image.csv, summary.csv, the CLI's tables, `protobench compare`, `evaluate --attack`."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from protobench.cli.app import app
from protobench.core.attack import ATTACKS
from protobench.core.metrics import MISALIGNMENT, METRICS, MetricSpec, per_image_specs, register

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


# a per-image metric: how far p*'s activation fell, in activation units
DROP = MetricSpec("ADROP", "ADROP (activation drop)", "activation", higher_is_worse=True, tolerance=0.25,
                  per_image=lambda o: o.act_star - o.act_star_adv)
# a run-level figure: the share of images whose prediction the attack changed
FLIPS = MetricSpec("FLIPS", "FLIPS (predictions changed, %)", "%", higher_is_worse=True, tolerance=2.0,
                   summary=lambda frame: 100.0 * float((frame["pred_before"] != frame["pred_after"]).mean()))


@pytest.fixture
def plugin_metrics():
    register(DROP)
    register(FLIPS)
    yield
    METRICS.remove("ADROP")
    METRICS.remove("FLIPS")


def evaluate(ckpt, data, out, *extra):
    result = invoke("evaluate", "--ckpt", ckpt, "--data", data, "--out", out, "--limit", 6, "--steps", 2, *extra)
    assert result.exit_code == 0, result.output
    return result


def test_a_plugin_metric_reaches_every_table(plugin_metrics, tiny_ckpt, image_folder, tmp_path):
    result = evaluate(tiny_ckpt, image_folder, tmp_path / "a")
    per_image = pd.read_csv(tmp_path / "a" / "per_image.csv")
    columns = list(per_image.columns)
    metric_columns = [spec.name for spec in per_image_specs([MISALIGNMENT])]  # the registry's, plugins last
    assert metric_columns[-1] == "ADROP" and columns[9:9 + len(metric_columns)] == metric_columns
    assert columns[-5:] == ["zero_grad", "zero_grad_steps", "protected_frac", "collapsed", "top_outside"]
    assert "FLIPS" not in columns  # a run-level figure has no per-image column
    assert per_image["ADROP"].tolist() == pytest.approx((per_image.act_before - per_image.act_after).tolist(),
                                                        abs=1e-5)
    summary = pd.read_csv(tmp_path / "a" / "summary.csv").iloc[0]
    drop_columns = ["ADROP_mean", "ADROP_std", "ADROP_n", "ADROP_ci_low", "ADROP_ci_high"]
    assert list(summary.index)[-8:] == [*drop_columns, "FLIPS", "zero_grad_images", "collapsed_images"]
    assert summary["ADROP_mean"] == pytest.approx(per_image["ADROP"].mean()) and summary["ADROP_n"] == 6
    flips = 100 * (per_image.pred_before != per_image.pred_after).sum() / 6
    assert summary["FLIPS"] == pytest.approx(flips)
    shown = " ".join(result.stdout.split())  # the CLI's summary table, padding squeezed
    assert f"ADROP (activation drop) │ {summary['ADROP_mean']:.2f} │ {summary['ADROP_std']:.2f} │" in shown
    assert f"FLIPS (predictions changed, %) │ {flips:.2f} │" in shown


def test_compare_judges_a_plugin_metric_with_its_own_tolerance(plugin_metrics, tiny_ckpt, image_folder, tmp_path):
    evaluate(tiny_ckpt, image_folder, tmp_path / "base")
    evaluate(tiny_ckpt, image_folder, tmp_path / "new", "--batch-size", 4)  # the same numbers
    same = invoke("compare", tmp_path / "base", tmp_path / "new", "--format", "markdown")
    assert same.exit_code == 0, same.output
    assert "| ADROP | " in same.stdout and "| +0.00 [+0.00, +0.00] | 0.25 | pass |" in same.stdout
    assert "| FLIPS | " in same.stdout and "| +0.00 [+0.00, +0.00] | 2.00 | pass |" in same.stdout
    table = invoke("compare", tmp_path / "base", tmp_path / "new")
    assert "ADROP" in table.stdout and "FLIPS" in table.stdout  # the rich table too
    per_image = pd.read_csv(tmp_path / "new" / "per_image.csv")
    per_image["ADROP"] += 0.5  # every image worse by 0.5 > 0.25 (compare pairs the per-image values)
    per_image.to_csv(tmp_path / "new" / "per_image.csv", index=False)
    worse = invoke("compare", tmp_path / "base", tmp_path / "new", "--format", "markdown")
    assert worse.exit_code == 1 and "| +0.50 [+0.50, +0.50] | 0.25 | **FAIL** |" in worse.stdout
    assert invoke("compare", tmp_path / "base", tmp_path / "new", "--tol", "ADROP=0.6").exit_code == 0


def test_a_run_without_a_plugin_metric_compares_as_undefined(tiny_ckpt, image_folder, tmp_path):
    evaluate(tiny_ckpt, image_folder, tmp_path / "old")  # before the plugin was installed
    register(DROP)
    try:
        evaluate(tiny_ckpt, image_folder, tmp_path / "new")
        newer = invoke("compare", tmp_path / "old", tmp_path / "new", "--format", "markdown")
        older = invoke("compare", tmp_path / "new", tmp_path / "old", "--format", "markdown")
    finally:
        METRICS.remove("ADROP")
    assert newer.exit_code == 0 and "| ADROP | - |" in newer.stdout and "| n/a |" in newer.stdout
    assert older.exit_code == 1 and "**FAIL**" in older.stdout  # dropped from NEW: it became undefined


def test_the_multi_model_and_finetune_tables_list_a_plugin_metric(plugin_metrics):
    from rich.console import Console

    from protobench.cli.tables import models_table
    from protobench.train.finetune import side_by_side

    row = {"model": "m", "PLC_mean": 1, "PAC_mean": 2, "PRC_mean": 3, "acc_before": 90, "acc_after": 80, "AC": 10,
           "ADROP_mean": 0.25, "FLIPS": 12.5, "error": None}
    console = Console(width=200, record=True)
    console.print(models_table([row]))
    shown = " ".join(console.export_text().split())
    assert "┃ AC ┃ ADROP ┃ FLIPS ┃" in shown and "│ 10.0 │ 0.25 │ 12.50 │" in shown
    rows = side_by_side(row, {**row, "ADROP_mean": 0.5})
    assert rows[-2:] == [("ADROP (activation drop)", 0.25, 0.5, 0.25), ("FLIPS (predictions changed, %)",
                                                                        12.5, 12.5, 0.0)]


def test_metric_specs_are_checked():
    from protobench.registry import RegistryError

    with pytest.raises(RegistryError, match="must be a word"):
        MetricSpec("bad name", "x", "%", True, 1.0, per_image=len)
    with pytest.raises(RegistryError, match="needs a per_image function, a summary function"):
        MetricSpec("EMPTY", "x", "%", True, 1.0)
    with pytest.raises(RegistryError, match="tolerance"):
        MetricSpec("NANTOL", "x", "%", True, math.nan, per_image=len)
    with pytest.raises(RegistryError, match="'PAC' is already registered"):
        register(MetricSpec("PAC", "x", "%", True, 1.0, per_image=len))
    with pytest.raises(RegistryError, match="must be a protobench.core.metrics.MetricSpec"):
        METRICS.add("FN", len)


def test_a_metric_that_returns_the_wrong_shape_is_named(tiny_adapter):
    from protobench.core.protocol import EvalProtocol
    from protobench.run.benchmark import evaluate_batch
    from protobench.run.forward import frozen_eval

    register(MetricSpec("WIDE", "x", "%", True, 1.0, per_image=lambda o: o.act))  # (B, P), not (B,)
    try:
        with frozen_eval(tiny_adapter.model), pytest.raises(TypeError, match="metric 'WIDE' must return one value"):
            evaluate_batch(tiny_adapter, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.arange(2),
                           EvalProtocol.make(steps=1))
    finally:
        METRICS.remove("WIDE")


@pytest.fixture
def identity_attack():
    """An attack that changes nothing, and remembers how it was called."""
    calls = []

    def unchanged(objective, x, attackable, noise, *, eps, step, steps, bounds=None):
        calls.append({"shape": tuple(attackable.shape), "dtype": attackable.dtype, "eps": eps, "step": step,
                      "steps": steps, "clipped": bounds is not None, "noise": (float(noise.min()), float(noise.max())),
                      "objective": tuple(objective(x).shape)})
        return x.clone(), torch.zeros(len(x), dtype=torch.long)

    ATTACKS.add("unchanged", unchanged)
    yield calls
    ATTACKS.remove("unchanged")


def test_a_registered_attack_runs_through_evaluate(identity_attack, tiny_ckpt, image_folder, tmp_path):
    invoke_args = ("--attack", "unchanged", "--eps", 0.3, "--step", 0.02, "--batch-size", 4)
    evaluate(tiny_ckpt, image_folder, tmp_path / "out", *invoke_args)
    assert len(identity_attack) == 2  # 6 images in batches of 4
    first = identity_attack[0]
    assert first["shape"] == (4, 1, 32, 32) and first["dtype"] == torch.bool and first["objective"] == (4,)
    assert (first["eps"], first["step"], first["steps"], first["clipped"]) == (0.3, 0.02, 2, True)
    assert -1 <= first["noise"][0] and first["noise"][1] < 1
    per_image = pd.read_csv(tmp_path / "out" / "per_image.csv")
    # nothing changed: the model sees the same images, so every metric is exactly 0
    assert (per_image.act_after == per_image.act_before).all() and (per_image.pred_after == per_image.pred_before).all()
    assert (per_image[["PAC", "PRC", "PLC", "zero_grad_steps"]] == 0).all().all()
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["protocol"]["attack"] == "unchanged"


def test_an_unknown_attack_is_one_line_with_a_suggestion(tiny_ckpt, image_folder, tmp_path):
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--attack", "pgdd")
    assert result.exit_code == 2 and not (tmp_path / "o").exists()
    assert "unknown attack 'pgdd'. Did you mean 'pgd'?" in result.stderr and "Traceback" not in result.output


DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def doc_example(module: str) -> str:
    """The file `module`.py that docs/metrics.md shows."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [b for b in blocks if b.startswith(f'"""{module}.py')]
    return code


def test_the_doc_examples_work_as_installed_plugins(tiny_ckpt, image_folder, tmp_path):
    """docs/metrics.md's metric and attack, installed through entry points, in a fresh process."""
    site = tmp_path / "site"
    (site / "mylab-0.1.dist-info").mkdir(parents=True)
    for module in ("mymetrics", "myattacks"):
        (site / f"{module}.py").write_text(doc_example(module))
    (site / "mylab-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab\nVersion: 0.1\n")
    (site / "mylab-0.1.dist-info" / "entry_points.txt").write_text(
        "[protobench.metrics]\nADROP = mymetrics:ADROP\n\n[protobench.attacks]\nshift = myattacks:shift\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "protobench", "evaluate", "--ckpt", tiny_ckpt, "--data", image_folder,
                           "--out", str(out), "--attack", "shift", "--limit", "4"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "ADROP (activation drop)" in done.stdout
    per_image = pd.read_csv(out / "per_image.csv")
    assert per_image["ADROP"].tolist() == pytest.approx((per_image.act_before - per_image.act_after).tolist(),
                                                        abs=1e-5)
    assert (per_image.act_after != per_image.act_before).any()  # the shift did move the activations
    assert json.loads((out / "meta.json").read_text())["protocol"]["attack"] == "shift"


def test_the_doc_region_works_as_an_installed_plugin(tiny_ckpt, image_folder, tmp_path):
    """docs/metrics.md's region, installed through an entry point, in a fresh process: the tiny
    ProtoPNet's 4 x 4 maps at 32 px, one matched cell (its argmax) per prototype: an 8-row band."""
    site = tmp_path / "site"
    (site / "mylab-0.1.dist-info").mkdir(parents=True)
    (site / "myregions.py").write_text(doc_example("myregions"))
    (site / "mylab-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab\nVersion: 0.1\n")
    (site / "mylab-0.1.dist-info" / "entry_points.txt").write_text("[protobench.regions]\nband = myregions:BAND\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "protobench", "evaluate", "--ckpt", tiny_ckpt, "--data", image_folder,
                           "--out", str(out), "--region", "band", "--steps", "2", "--limit", "4"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    per_image = pd.read_csv(out / "per_image.csv")
    assert per_image["protected_frac"].tolist() == pytest.approx([8 / 32] * 4)
    protocol = json.loads((out / "meta.json").read_text())["protocol"]
    assert (protocol["region"], protocol["margin"]) == ("band", 0)


def test_a_metric_named_like_one_of_our_columns_is_refused_before_any_work(tiny_ckpt, image_folder, tmp_path):
    register(MetricSpec("label", "x", "%", True, 1.0, per_image=lambda o: o.labels))
    try:
        result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o")
    finally:
        METRICS.remove("label")
    assert result.exit_code == 2 and not (tmp_path / "o").exists()
    assert "writes the column 'label'" in result.stderr and "rename the metric" in result.stderr
