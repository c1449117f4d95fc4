"""convergence.csv: the attack's objective, PAC and share of images still improving, per step."""

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from protobench.cli.app import app
from protobench.run import convergence


def test_table_by_hand():
    """Three images, a random start and three steps. Image 1: best 2.5 (clean), 2, 1.5, 1.5, 1.0 ->
    improving at steps 0, 1, 3; image 2: 4, 4, 4 (a drop of 0.001 is under 0.1% of 4), 3, 3 -> step 2;
    image 3: 3, 3, 2, 1, 0 -> steps 1, 2, 3."""
    records = [
        {"trace_objective": [2.0, 1.5, 1.6, 1.0], "trace_pac": [10.0, 20.0, 30.0, 40.0], "objective_clean": 2.5},
        {"trace_objective": [4.0, 3.999, 3.0, 3.0], "trace_pac": [math.nan, 0.0, 10.0, 20.0], "objective_clean": 4.0},
        {"trace_objective": [3.0, 2.0, 1.0, 0.0], "trace_pac": [0.0, 10.0, 20.0, 30.0], "objective_clean": 3.0},
        {"index": 7},  # no trace (a run without the attack): left out
    ]
    table = convergence.table(records)
    assert table.columns.tolist() == convergence.COLUMNS
    assert table["step"].tolist() == [0, 1, 2, 3] and table["images"].tolist() == [3] * 4
    assert table["objective_mean"].tolist() == pytest.approx([3.0, 7.499 / 3, 5.6 / 3, 4.0 / 3])
    assert table["PAC_mean"].tolist() == pytest.approx([5.0, 10.0, 20.0, 30.0])  # NaN left out at step 0
    assert table["improving_share"].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert convergence.table([{"index": 1}]) is None


def test_every_run_writes_its_convergence(tmp_path, tiny_ckpt, image_folder):
    out = tmp_path / "run"
    args = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--limit", 5, "--steps", 3]
    assert CliRunner().invoke(app, [str(a) for a in args]).exit_code == 0
    table = pd.read_csv(out / "convergence.csv")
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    assert table["step"].tolist() == [0, 1, 2, 3] and (table["images"] == 5).all()  # start, 2 steps, returned
    assert table["PAC_mean"].iloc[-1] == pytest.approx(summary["PAC_mean"], abs=1e-4)  # the returned images
    assert "trace_objective" not in pd.read_csv(out / "per_image.csv").columns
