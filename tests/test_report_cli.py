"""protobench report's refusals (one line, exit 2, nothing written) and evaluate's --report / --save-examples."""

import json

import pandas as pd

from conftest import tiny_config, write_image_folder
from report_fixtures import copy, finished, invoke  # noqa: F401 - finished is a fixture
from protobench.adapters.protopnet import ProtoPNetAdapter


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    text = " ".join(result.stderr.split())
    for needle in needles:
        assert needle in text, text


def test_a_directory_without_meta_json(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "per_image.csv").write_text("index\n0\n")
    one_line_error(invoke("report", tmp_path / "r"), "not a protobench result directory (no meta.json)")
    one_line_error(invoke("report", tmp_path / "nowhere"), "no such result directory")
    assert not (tmp_path / "r" / "report").exists()


def test_an_interrupted_run(finished, tmp_path):
    run = copy(finished, tmp_path)
    (run / "meta.json").rename(run / "run.json")
    one_line_error(invoke("report", run), "holds an interrupted run", "--resume")


def test_k_larger_than_the_run(finished, tmp_path):
    one_line_error(invoke("report", finished, "--worst", 13, "--out", tmp_path / "r"),
                   "--worst 13: tiny has only 12 images with a PAC", "use --worst 12 or less")
    one_line_error(invoke("report", finished, "--best", -1, "--out", tmp_path / "r"), "--best must be")
    assert not (tmp_path / "r").exists()


def test_a_multi_model_directory_reports_each_model_and_names_the_failed_one(tmp_path):
    write_image_folder(tmp_path / "data", per_class=2)
    good = tmp_path / "good.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(), seed=0).save(str(good))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00garbage" * 8)
    out = tmp_path / "sweep"
    result = invoke("evaluate", "--ckpt", good, "--ckpt", broken, "--data", tmp_path / "data", "--out", out,
                    "--steps", 1)
    assert result.exit_code == 1  # one model failed
    result = invoke("report", out, "--examples", "none")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "broken failed in the run" in " ".join(result.stderr.split())
    assert (out / "report" / "run1-good-prototypes.csv").is_file()
    (out / "good" / "meta.json").unlink()
    one_line_error(invoke("report", out), f"{out / 'good'} is not a protobench result directory")


def test_a_changed_checkpoint_is_reported_not_drawn(finished, tmp_path):
    run = copy(finished, tmp_path)
    ProtoPNetAdapter.from_config(tiny_config(), seed=7).save(str(run.parent / "tiny.safetensors"))
    one_line_error(invoke("report", run), "is not the one", "measured (sha256", "--examples saved")
    assert not (run / "report").exists()
    assert invoke("report", run, "--examples", "saved", "--worst", 1).exit_code == 0  # the user's choice


def test_changed_data_is_reported_not_drawn(finished, tmp_path):
    run = copy(finished, tmp_path)
    (run.parent / "data" / "class1" / "img0.png").write_bytes(b"not the image it was")
    one_line_error(invoke("report", run), "changed since", "was measured")


def test_a_moved_checkpoint_can_be_pointed_at(finished, tmp_path):
    run = copy(finished, tmp_path)
    moved = tmp_path / "moved.safetensors"
    (run.parent / "tiny.safetensors").rename(moved)
    one_line_error(invoke("report", run, "--worst", 1), "moved or deleted", "--ckpt")
    assert invoke("report", run, "--worst", 1, "--best", 0, "--ckpt", moved).exit_code == 0


def test_numbers_the_rerun_does_not_reproduce_are_refused_unless_forced(finished, tmp_path):
    run = copy(finished, tmp_path)
    table = pd.read_csv(run / "per_image.csv")
    worst = int(table.loc[table["PAC"].idxmax(), "index"])
    table.loc[table["index"] == worst, "act_before"] += 1.0
    table.to_csv(run / "per_image.csv", index=False)
    one_line_error(invoke("report", run, "--worst", 1, "--best", 0), "does not reproduce",
                   f"image {worst}", "act_before")
    result = invoke("report", run, "--worst", 1, "--best", 0, "--force")
    assert result.exit_code == 0, result.output
    assert "the re-run differs from per_image.csv" in (run / "report" / "report.html").read_text()


def test_other_bad_options(finished, tmp_path):
    one_line_error(invoke("report", finished, "--examples", "maybe", "--out", tmp_path / "a"), "--examples")
    one_line_error(invoke("report", finished, "--device", "tpu", "--out", tmp_path / "a"), "--device")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("mine")
    one_line_error(invoke("report", finished, "--out", tmp_path / "busy"), "holds other files")
    one_line_error(invoke("report", finished, finished, "--ckpt", "x.pt", "--out", tmp_path / "a"), "one model")
    damaged = copy(finished, tmp_path)
    (damaged / "examples.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    one_line_error(invoke("report", damaged, "--examples", "saved"), "examples.safetensors")


def test_a_new_report_replaces_the_earlier_one(finished, tmp_path):
    out = tmp_path / "r"
    assert invoke("report", finished, "--out", out, "--worst", 2, "--best", 0).exit_code == 0
    assert len(list(out.glob("*.png"))) > 2
    assert invoke("report", finished, "--out", out, "--examples", "none").exit_code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["convergence.png", "run1-tiny-histograms.png"]


def test_evaluate_report_and_save_examples(tmp_path):
    ProtoPNetAdapter.from_config(tiny_config(), seed=0).save(str(tmp_path / "m.safetensors"))
    write_image_folder(tmp_path / "data", per_class=1)
    out = tmp_path / "o"
    result = invoke("evaluate", "--ckpt", tmp_path / "m.safetensors", "--data", tmp_path / "data", "--out", out,
                    "--steps", 1, "--report", "--save-examples", 50)
    assert result.exit_code == 0, result.output
    assert "kept the tensors of 3 images" in result.stdout  # K above the run's 3 images keeps them all
    assert f"report written to {out / 'report' / 'report.html'}" in result.stdout
    assert "re-running" not in result.output  # its own report draws the tensors the run kept
    assert "kept by evaluate from the run itself" in (out / "report" / "report.html").read_text(encoding="utf-8")
    assert (out / "examples.safetensors").is_file()
    bad = invoke("evaluate", "--ckpt", tmp_path / "m.safetensors", "--data", tmp_path / "data", "--out",
                 tmp_path / "p", "--save-examples", 0)
    one_line_error(bad, "--save-examples must be a whole number from 1 to 1000")
    assert not (tmp_path / "p").exists()


def test_evaluate_report_of_a_run_smaller_than_worst_draws_what_there_is(tmp_path):
    """evaluate --report on 2 images: the default --worst 3 means "at most" there (`protobench
    report --worst 3` on the same run is still refused, as asked)."""
    ProtoPNetAdapter.from_config(tiny_config(), seed=0).save(str(tmp_path / "m.safetensors"))
    write_image_folder(tmp_path / "data", per_class=1)
    out = tmp_path / "o"
    result = invoke("evaluate", "--ckpt", tmp_path / "m.safetensors", "--data", tmp_path / "data", "--out", out,
                    "--steps", 1, "--limit", 2, "--report")
    assert result.exit_code == 0, result.output
    assert (out / "report" / "report.html").is_file()
    again = invoke("report", out, "--out", tmp_path / "r", "--worst", 3)
    one_line_error(again, "--worst 3")


def test_evaluate_without_report_says_how_to_make_one(tmp_path):
    ProtoPNetAdapter.from_config(tiny_config(), seed=0).save(str(tmp_path / "m.safetensors"))
    write_image_folder(tmp_path / "data", per_class=1)
    result = invoke("evaluate", "--ckpt", tmp_path / "m.safetensors", "--data", tmp_path / "data", "--out",
                    tmp_path / "o", "--steps", 1)
    assert f"protobench report {tmp_path / 'o'}" in result.stdout
    assert not (tmp_path / "o" / "report").exists()


def test_a_model_is_never_named_like_the_report_folder():
    from protobench.run.sweep import unique_names

    assert unique_names(["a/report.pt", "b/Report.pt", "c/x.pt"]) == ["report-2", "Report-3", "x"]


def test_the_demo_writes_its_report_and_says_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("evaluate", "--limit", 6, "--steps", 2)
    assert result.exit_code == 0, result.output
    html = tmp_path / "protobench-results" / "demo" / "report" / "report.html"
    assert "report written to protobench-results/demo/report/report.html" in " ".join(result.stdout.split())
    text = html.read_text(encoding="utf-8")
    assert "-vertical" in text or "-horizontal" in text  # the demo's class names
    assert "training image" in text  # the prototypes' source patches, from the demo's train split
    assert list((tmp_path / "protobench-results" / "demo" / "report").glob("prototype-sources-*.json"))
    again = invoke("report", "protobench-results/demo", "--worst", 1, "--best", 0)
    assert again.exit_code == 0, again.output
    meta = json.loads((tmp_path / "protobench-results" / "demo" / "meta.json").read_text())
    assert meta["evaluated_images"] == 6
