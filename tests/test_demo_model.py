"""The shipped demo model: it loads, classifies ProtoShapes, and its benchmark numbers stay put.

The pinned values were measured with the shipped weights (see docs/demo.md); a change to
the model code, the data generator or the benchmark that moves them fails here.
"""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from protobench.core.protocol import EvalProtocol
from protobench.run import benchmark
from protobench.run.context import RunContext
from protobench.run.forward import Runtime
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.cli.app import app
from protobench.data.imagelist import Subset
from protobench.demo import DEMO_CKPT, DEMO_RECORD, demo_checkpoint
from protobench.demo.shapes import ProtoShapes

SUBSET = range(16)  # the first 16 test images: every class, fixed
PINNED_ACT = 7.6552  # mean clean activation of p* (no attack: tight tolerance)
PINNED_PAC = 20.73  # mean PAC under pgd with 5 steps


@pytest.fixture(scope="module")
def demo_records():
    adapter = ProtoPNetAdapter.load(demo_checkpoint())
    data = ProtoShapes("test", adapter.info.mean, adapter.info.std)
    context = RunContext(adapter.device, Runtime(chunk=8), batch_size=16, workers=0)
    records, skipped = benchmark.run(adapter, Subset(data, SUBSET), data.paths, EvalProtocol.make(steps=5), context)
    assert not skipped
    return pd.DataFrame(records)


def test_the_record_beside_the_weights_describes_them():
    record = json.loads(DEMO_RECORD.read_text())
    assert record["test_accuracy"] >= 90
    assert record["model"]["num_classes"] == 6 and record["design"]["size"] == 64
    assert record["torch_version"] and record["recipe"]["seed"] == record["seed"]
    assert DEMO_CKPT.stat().st_size < 4_000_000


def test_demo_model_classifies_the_subset(demo_records):
    assert (demo_records.pred_before == demo_records.label).all()


def test_demo_model_numbers_are_pinned(demo_records):
    assert demo_records.act_before.mean() == pytest.approx(PINNED_ACT, rel=1e-4)
    assert demo_records.PAC.mean() == pytest.approx(PINNED_PAC, abs=0.5)
    assert not demo_records.zero_grad.any()


def test_evaluate_without_arguments_runs_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["evaluate", "--limit", "8", "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "protoshapes (8 images)" in result.stdout
    meta = json.loads((tmp_path / "protobench-results" / "demo" / "meta.json").read_text())
    assert meta["dataset"] == "protoshapes" and meta["checkpoint"] == str(DEMO_CKPT)
    assert meta["evaluated_images"] == 8
