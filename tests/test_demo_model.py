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
# Measured with the shipped weights on 2 threads and 1, AVX-512 and AVX2 kernels (docs/demo.md, Tests):
# the mean clean activation spread by 1.1e-6, the mean PAC by 1e-5, p* and PLC not at all. The
# tolerances leave ~100x for other CPUs' summation orders; they hold because the prototype distance
# is float64 (with it in float32 the clean activations alone spread by up to 9e-3 per image).
PINNED_ACT = 6.63522  # mean clean activation of p*, +- 1e-4
PINNED_PAC = 10.757  # mean PAC under pgd with 5 steps, +- 0.05 (5 steps: 40 compound float noise to ~1 point per image)
PINNED_PLC = 14.565  # mean PLC, +- 0.5: one pixel at the top-10% threshold moves an image's PLC by ~4 points
PINNED_PROTOS = [1, 2, 4, 6, 9, 11, 1, 3, 4, 10, 9, 7, 1, 3, 4, 6]  # p* per image


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
    assert record["torch_version"] and record["plan"]["seed"] == record["seed"]
    phases = record["plan"]["phases"]  # the log has a row per epoch of each phase of the plan, in order
    assert [row["phase"] for row in record["log"]] == [p["name"] for p in phases for _ in range(p["epochs"])]
    assert [p["name"] for p in phases] == ["warm", "joint", "push", "last"]
    assert DEMO_CKPT.stat().st_size < 4_000_000


def test_demo_model_classifies_the_subset(demo_records):
    assert (demo_records.pred_before == demo_records.label).all()


def test_demo_model_numbers_are_pinned(demo_records):
    assert demo_records.proto.tolist() == PINNED_PROTOS
    assert demo_records.act_before.mean() == pytest.approx(PINNED_ACT, abs=1e-4)
    assert demo_records.PAC.mean() == pytest.approx(PINNED_PAC, abs=0.05)
    assert demo_records.PLC.mean() == pytest.approx(PINNED_PLC, abs=0.5)
    assert not demo_records.zero_grad.any()


def test_evaluate_without_arguments_runs_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["evaluate", "--limit", "8", "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "protoshapes (8 images)" in result.stdout
    meta = json.loads((tmp_path / "protobench-results" / "demo" / "meta.json").read_text())
    assert meta["dataset"] == "protoshapes" and meta["checkpoint"] == str(DEMO_CKPT)
    assert meta["evaluated_images"] == 8
