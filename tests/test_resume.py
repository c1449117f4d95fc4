"""Interrupted runs: Ctrl-C and kill -9 leave a valid partial run, and --resume ends where an
uninterrupted run ends, byte for byte."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from conftest import tiny_config, write_image_folder
from protobench.run import benchmark
from protobench.run import resume as runstate
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.core.protocol import EvalProtocol
from protobench.cli.app import app
from protobench.errors import Interrupted, ProtobenchError
from protobench.run.evaluate import EvaluateConfig, evaluate
from protobench.run.watch import NoProgress

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def same_results(a, b):
    for name in ("per_image.csv", "summary.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def partial_lines(out):
    path = out / runstate.PARTIAL
    return path.read_bytes().count(b"\n") if path.exists() else 0


class StopAfter(NoProgress):
    """Progress that presses Ctrl-C after `batches` batches."""

    def __init__(self, batches):
        self.left = batches

    def update(self, done, values):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_a_valid_partial_run_and_resume_completes_it(tiny_ckpt, image_folder, tmp_path):
    def cfg(out, **kw):
        options = {"batch_size": 3, "device": "cpu", **kw}
        return EvaluateConfig(ckpt=tiny_ckpt, data=image_folder, out=str(out), protocol=EvalProtocol.make(steps=4),
                              **options)

    evaluate(cfg(tmp_path / "full"))
    with pytest.raises(Interrupted, match="6 of 12 images.*--resume"):
        evaluate(cfg(tmp_path / "cut"), StopAfter(2))
    cut = tmp_path / "cut"
    assert runstate.state(cut) == "partial" and partial_lines(cut) == 6
    records, skipped = runstate.read_partial(cut)
    assert [r["index"] for r in records] == list(range(6)) and skipped == []
    assert not (cut / "meta.json").exists()
    with pytest.raises(ProtobenchError, match="interrupted run: add --resume"):
        evaluate(cfg(cut))
    result = evaluate(cfg(cut, batch_size=5, resume=True))  # another batch size: same numbers on the CPU
    same_results(tmp_path / "full", cut)
    assert result["meta"]["resumed"] is True and runstate.state(cut) == "complete"
    assert not (cut / runstate.PARTIAL).exists() and not (cut / runstate.RUN).exists()
    again = evaluate(cfg(cut, resume=True))  # resuming a complete run changes nothing
    assert again["summary"]["PAC_mean"] == pytest.approx(result["summary"]["PAC_mean"])


def test_cli_ctrl_c_says_how_to_resume(tiny_ckpt, image_folder, tmp_path, monkeypatch):
    real = benchmark.evaluate_batch
    calls = []

    def interrupt_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark, "evaluate_batch", interrupt_third)
    out = tmp_path / "o"
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--steps", 2,
                    "--batch-size", 4)
    assert result.exit_code == 130
    message = " ".join(result.stderr.split())
    assert "interrupted after 8 of 12 images" in message and "--resume" in message
    assert partial_lines(out) == 8


def test_resume_refuses_a_different_run(tiny_ckpt, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "o"
    base = ["--data", image_folder, "--out", out, "--limit", 6, "--resume"]
    monkeypatch.setattr(benchmark, "evaluate_batch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert invoke("evaluate", "--ckpt", tiny_ckpt, *base[:-1], "--steps", 2).exit_code == 130
    monkeypatch.undo()
    assert runstate.state(out) == "partial"

    def refused(*args):
        result = invoke("evaluate", *args)
        assert result.exit_code == 2 and "holds a different run" in result.stderr, result.output
        return " ".join(result.stderr.split())

    assert "protocol.steps: recorded 2, now 3" in refused("--ckpt", tiny_ckpt, *base, "--steps", 3)
    tokens = refused("--ckpt", tiny_ckpt, *base, "--steps", 2, "--region", "tokens")
    assert 'protocol.region: recorded "box", now "tokens"' in tokens
    five = ["--data", image_folder, "--out", out, "--limit", 5, "--resume", "--steps", 2]
    assert "limit: recorded 6, now 5" in refused("--ckpt", tiny_ckpt, *five)
    other = tmp_path / "other.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(), seed=1).save(str(other))
    assert "checkpoint_sha256" in refused("--ckpt", other, *base, "--steps", 2)
    extra = tmp_path / "data" / "class0" / "extra.png"
    extra.write_bytes((tmp_path / "data" / "class0" / "img0.png").read_bytes())
    assert "dataset_fingerprint" in refused("--ckpt", tiny_ckpt, *base, "--steps", 2)
    extra.unlink()
    assert invoke("evaluate", "--ckpt", tiny_ckpt, *base, "--steps", 2).exit_code == 0
    assert "protocol.seed" in refused("--ckpt", tiny_ckpt, *base, "--steps", 2, "--seed", 1)  # complete runs too


def test_resume_with_nothing_to_resume_starts_a_fresh_run(tiny_ckpt, image_folder, tmp_path):
    """A CI job that always passes --resume (to survive preemption) must pass on its first run."""
    args = ["evaluate", "--data", image_folder, "--steps", 1, "--limit", 4]
    result = invoke(*args, "--ckpt", tiny_ckpt, "--out", tmp_path / "o", "--resume")
    assert result.exit_code == 0, result.output
    assert f"note: nothing to resume in {tmp_path / 'o'}: starting a fresh run" in result.stderr
    assert runstate.state(tmp_path / "o") == "complete"
    many = invoke(*args, "--ckpt", tiny_ckpt, "--ckpt", tiny_ckpt, "--out", tmp_path / "m", "--resume")
    assert many.exit_code == 0 and many.stderr.count("note: nothing to resume") == 1, many.output
    assert runstate.state(tmp_path / "m" / "tiny-2") == "complete"
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "summary.csv").write_text("model\nx\n")  # results, but no run of ours to continue
    stray = invoke(*args, "--ckpt", tiny_ckpt, "--out", tmp_path / "stray", "--resume")
    assert stray.exit_code == 2 and "nothing to resume" in stray.stderr and "--overwrite" in stray.stderr


def test_resume_rebuilds_a_deleted_summary(tiny_ckpt, image_folder, tmp_path):
    args = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--steps", 2]
    assert invoke(*args).exit_code == 0
    original = (tmp_path / "o" / "summary.csv").read_bytes()
    (tmp_path / "o" / "summary.csv").unlink()
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "summary.csv was missing: rebuilt it from per_image.csv" in " ".join(result.stderr.split())
    assert (tmp_path / "o" / "summary.csv").read_bytes() == original
    assert "PAC (activation change, %)" in result.stdout


def test_resume_of_a_run_without_per_image_csv_says_what_to_do(tiny_ckpt, image_folder, tmp_path):
    args = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--steps", 1]
    assert invoke(*args).exit_code == 0
    (tmp_path / "o" / "per_image.csv").unlink()
    result = invoke(*args, "--resume")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "per_image.csv is missing" in result.stderr and "--overwrite" in result.stderr
    (tmp_path / "o" / "summary.csv").write_text("model,images\ntiny,twelve\n")
    (tmp_path / "o" / "per_image.csv").write_text("index\n0\n")
    result = invoke(*args, "--resume")
    assert result.exit_code == 2 and "is damaged" in result.stderr


@pytest.mark.parametrize("damage", ["[1, 2]", "null", '"text"', "[" * 100000])
def test_damaged_run_records_are_one_line_errors(tiny_ckpt, image_folder, tmp_path, damage):
    args = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--steps", 1]
    assert invoke(*args).exit_code == 0
    (tmp_path / "o" / "meta.json").write_text(damage)
    result = invoke(*args, "--resume")
    assert result.exit_code == 2 and "meta.json" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("line", ['5', '"x"', '{"skipped": "a"}', '{"index": -1}', '{"index": 99999}', "[]"])
def test_damaged_partial_log_lines_are_one_line_errors(tiny_ckpt, image_folder, tmp_path, monkeypatch, line):
    out = tmp_path / "o"
    args = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--steps", 1]
    monkeypatch.setattr(benchmark, "evaluate_batch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert invoke(*args).exit_code == 130
    monkeypatch.undo()
    (out / runstate.PARTIAL).write_text(line + "\n")
    result = invoke(*args, "--resume")
    assert result.exit_code == 2 and "damaged" in result.stderr and "Traceback" not in result.output


def test_a_torn_last_line_is_dropped(tmp_path):
    runstate.start(tmp_path, {"protocol": {}})
    with runstate.PartialLog(tmp_path) as log:
        log.append([{"index": 0, "PAC": 1.5}, {"index": 2, "PAC": float("nan")}], [1])
    whole = (tmp_path / runstate.PARTIAL).read_bytes()
    with open(tmp_path / runstate.PARTIAL, "ab") as f:
        f.write(b'{"index": 3, "PA')  # what a kill in the middle of a write leaves
    records, skipped = runstate.read_partial(tmp_path)
    assert [r["index"] for r in records] == [0, 2] and skipped == [1]
    assert records[1]["PAC"] != records[1]["PAC"]  # NaN survives the round trip
    assert (tmp_path / runstate.PARTIAL).read_bytes() == whole


def test_sigkill_mid_run_then_resume_is_identical(tiny_ckpt, tmp_path):
    data = write_image_folder(tmp_path / "many", classes=3, per_class=12)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def start(out, *extra):
        cmd = [sys.executable, "-m", "protobench", "evaluate", "--ckpt", tiny_ckpt, "--data", data, "--out",
               str(out), "--steps", "20", "--device", "cpu", *extra]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    reference = start(tmp_path / "full", "--batch-size", "4")
    victim = start(tmp_path / "cut", "--batch-size", "2")
    deadline = time.monotonic() + 120
    while partial_lines(tmp_path / "cut") < 6 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    done = partial_lines(tmp_path / "cut")
    assert 6 <= done < 36, f"the kill did not land mid-run ({done} of 36 images done)"
    resumed = start(tmp_path / "cut", "--batch-size", "3", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
    same_results(tmp_path / "full", tmp_path / "cut")
    meta = json.loads((tmp_path / "cut" / "meta.json").read_text())
    assert meta["resumed"] is True and meta["evaluated_images"] == 36
