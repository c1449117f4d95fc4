"""`protobench evaluate` is a thin layer over the library: every way it runs (one checkpoint, several, the
demo, --resume of a finished run) parses its options into the one call protobench.evaluate makes too,
protobench.api.evaluate.run_evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import protobench
from protobench.api import evaluate as api_evaluate
from protobench.cli.app import app

FAST = ("--steps", "1", "--limit", "3", "--device", "cpu")


@pytest.fixture
def calls(monkeypatch):
    """The arguments of every run_evaluation call, which still runs."""
    seen, real = [], api_evaluate.run_evaluation

    def record(model, data, protocol, **options):
        seen.append({"model": model, "data": data, "protocol": protocol, **options})
        return real(model, data, protocol, **options)

    monkeypatch.setattr(api_evaluate, "run_evaluation", record)
    return seen


def cli(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def test_one_checkpoint_and_resuming_it_finished(calls, tiny_ckpt, image_folder, tmp_path):
    out = tmp_path / "run"
    first = cli("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, *FAST, "--eps", "0.2",
                "--adapter-option", "img_size=32")
    again = cli("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, *FAST, "--eps", "0.2",
                "--adapter-option", "img_size=32", "--resume")
    assert [c["model"] for c in calls] == [[tiny_ckpt], [tiny_ckpt]]
    call = calls[0]
    assert (call["data"], call["out"], call["adapter"], call["adapter_options"]) == (image_folder, str(out), ["auto"],
                                                                                     {"img_size": 32})
    assert (call["protocol"].eps, call["protocol"].steps, call["limit"], call["device"], call["resume"]) == (
        0.2, 1, 3, "cpu", False)
    assert calls[1]["resume"] is True
    assert f"results written to {out}/ (per_image.csv, summary.csv, meta.json)" in first.stdout.splitlines()
    assert again.stdout == first.stdout  # the finished run's results, read back


def test_the_demo_evaluates_its_subset_unless_limit_says_otherwise(calls, tiny_ckpt, image_folder, tmp_path,
                                                                     monkeypatch):
    import protobench.demo

    monkeypatch.setattr(protobench.demo, "DEMO_LIMIT", 4)  # read at each run: a quick demo
    fast = ("--steps", "1", "--device", "cpu", "--no-report")
    cli("evaluate", "--out", tmp_path / "demo", *fast)
    cli("evaluate", "--out", tmp_path / "two", "--limit", "2", *fast)
    cli("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "mine", *fast,
        "--adapter-option", "img_size=32")
    assert [c["limit"] for c in calls] == [4, 2, None]


def test_several_checkpoints(calls, tiny_ckpt, image_folder, tmp_path):
    other = Path(tmp_path) / "other.safetensors"
    other.write_bytes(Path(tiny_ckpt).read_bytes())
    cli("evaluate", "--ckpt", tiny_ckpt, "--ckpt", other, "--data", image_folder, "--out", tmp_path / "runs", *FAST)
    assert len(calls) == 1 and calls[0]["model"] == [tiny_ckpt, str(other)] and calls[0]["adapter"] == ["auto", "auto"]
    assert (tmp_path / "runs" / "tiny" / "meta.json").is_file() and (tmp_path / "runs" / "other" / "meta.json").is_file()


def test_the_demo_with_no_model_and_no_data(calls, tmp_path):
    from protobench.demo import DEMO_DATA, demo_checkpoint

    cli("evaluate", "--out", tmp_path / "demo", "--no-report", *FAST)
    assert len(calls) == 1 and (calls[0]["model"], calls[0]["data"]) == ([demo_checkpoint()], DEMO_DATA)


def test_python_makes_the_same_call(calls, tiny_ckpt, image_folder, tmp_path):
    results = protobench.evaluate(tiny_ckpt, image_folder, steps=1, limit=3, device="cpu", progress=False,
                                  out=tmp_path / "api")
    assert len(calls) == 1 and calls[0]["model"] == tiny_ckpt and calls[0]["out"] == tmp_path / "api"
    model = results.source[0]  # read from the file by the run itself, kept for report()
    assert model.ckpt == tiny_ckpt and model.device.type == "cpu"


def test_a_checkpoint_is_read_after_the_output_directory_is_checked_from_python_as_from_the_cli(
        tiny_ckpt, image_folder, tmp_path):
    out = tmp_path / "taken"
    cli("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, *FAST)
    missing = tmp_path / "missing.safetensors"
    said = cli("evaluate", "--ckpt", missing, "--data", image_folder, "--out", out, *FAST, code=2)
    with pytest.raises(protobench.ProtobenchError) as raised:
        protobench.evaluate(missing, image_folder, out=out, progress=False)
    assert said.output.startswith(f"error: {raised.value}")
    assert "already holds results" in str(raised.value)
