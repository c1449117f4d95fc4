"""protobench compare on hand-made summaries: tolerance logic, exit codes 0 / 1 / 2, markdown."""

import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from protobench.core.metrics import MISALIGNMENT, specs
from protobench.cli.app import app
from protobench.run.compare import judge, parse_tolerances

runner = CliRunner()
NAN = float("nan")
META = {"protocol": {"name": "default", "attack": "pgd", "steps": 40, "seed": 0}, "dataset_kind": "cub",
        "split": "test", "limit": None, "dataset_fingerprint": {"sha256": "ab" * 32, "files": 5794}}
ROW = {"PLC_mean": 20.0, "PAC_mean": 10.0, "PRC_mean": 3.0, "AC": 8.0, "acc_before": 76.0, "acc_after": 68.0}


def write(directory, rows, meta=META, per_model_meta=None):
    """A result directory: summary.csv (+ meta.json; per-model folders when per_model_meta is given)."""
    directory.mkdir(parents=True)
    pd.DataFrame([{"model": "m", "images": 100, **ROW, **r} for r in rows]).to_csv(directory / "summary.csv",
                                                                                   index=False)
    if per_model_meta is not None:
        for name, m in per_model_meta.items():
            (directory / name).mkdir()
            (directory / name / "meta.json").write_text(json.dumps(m))
        meta = {"models": [{"model": name, "dir": name} for name in per_model_meta]}
    if meta is not None:
        (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def compare(*args):
    return runner.invoke(app, ["compare", *[str(a) for a in args]])


@pytest.mark.parametrize("base, new, tol, higher_is_worse, expected", [
    (10.0, 11.0, 1.0, True, "pass"),  # worse by exactly the tolerance: allowed
    (10.0, 11.5, 1.0, True, "FAIL"),
    (10.0, 2.0, 1.0, True, "pass"),  # better
    (-3.0, -1.5, 1.0, True, "FAIL"),  # PAC can be negative: -1.5 is still 1.5 worse than -3
    (80.0, 79.5, 1.0, False, "pass"),
    (80.0, 78.9, 1.0, False, "FAIL"),  # accuracy fell 1.1 points
    (80.0, 95.0, 1.0, False, "pass"),
    (5.0, 5.0, 0.0, True, "pass"),
    (5.0, 5.01, 0.0, True, "FAIL"),
    (NAN, NAN, 1.0, True, "n/a"),
    (NAN, 4.0, 1.0, True, "n/a"),  # nothing to compare against
    (4.0, NAN, 1.0, True, "FAIL"),  # the metric became undefined
])
def test_judge(base, new, tol, higher_is_worse, expected):
    assert judge(base, new, tol, higher_is_worse) == expected


def test_tolerances():
    assert parse_tolerances([]) == {"PLC": 1.0, "PAC": 1.0, "PRC": 0.5, "AC": 1.0, "acc_before": 1.0,
                                    "acc_after": 1.0, "consistency": 2.0, "stability": 2.0}
    tol = parse_tolerances(["PAC=2.5", "PLC=2", "acc=0.25"])
    assert (tol["PAC"], tol["PLC"], tol["acc_before"], tol["acc_after"], tol["PRC"]) == (2.5, 2.0, 0.25, 0.25, 0.5)
    for bad, needle in (("PAX=1", "METRIC=VALUE"), ("PAC", "METRIC=VALUE"), ("PAC=lots", "not a number"),
                        ("PAC=-1", "zero or positive"), ("PAC=nan", "zero or positive"),
                        ("PAC=inf", "finite number")):
        with pytest.raises(ValueError, match=needle):
            parse_tolerances([bad])


def test_identical_runs_pass(tmp_path):
    base = write(tmp_path / "base", [{}])
    result = compare(base, write(tmp_path / "new", [{}]))
    assert result.exit_code == 0, result.output
    assert "no regression" in result.stdout


def test_worse_beyond_tolerance_fails_and_tol_relaxes_it(tmp_path):
    base = write(tmp_path / "base", [{}])
    new = write(tmp_path / "new", [{"PAC_mean": 12.0, "PLC_mean": 18.0, "acc_before": 75.5}])
    result = compare(base, new, "--format", "markdown")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "### protobench compare: **1 regression**"
    assert "| m | PAC | 10.00 | 12.00 | +2.00 | 1.00 | **FAIL** |" in lines
    assert "| m | PLC | 20.00 | 18.00 | -2.00 | 1.00 | pass |" in lines  # lower PLC is better
    assert "| m | acc_before | 76.00 | 75.50 | -0.50 | 1.00 | pass |" in lines
    assert compare(base, new, "--tol", "PAC=2").exit_code == 0
    assert compare(base, new, "--tol", "PAC=2", "--tol", "acc=0.4").exit_code == 1  # 0.5 points of accuracy


def test_summary_csv_paths_work_too(tmp_path):
    base = write(tmp_path / "base", [{}])
    new = write(tmp_path / "new", [{"acc_after": 66.5, "AC": 9.5}])
    assert compare(base / "summary.csv", new / "summary.csv").exit_code == 1


def test_one_accuracy_drop_is_one_failure(tmp_path):
    """AC is the difference of the two accuracies: reported, never gated, so a drop fails once."""
    base = write(tmp_path / "base", [{}])
    new = write(tmp_path / "new", [{"acc_after": 66.0, "AC": 10.0}])
    result = compare(base, new, "--format", "markdown")
    assert result.exit_code == 1 and result.stdout.startswith("### protobench compare: **1 regression**")
    assert "| m | acc_after | 68.00 | 66.00 | -2.00 | 1.00 | **FAIL** |" in result.stdout
    assert "| m | AC | 8.00 | 10.00 | +2.00 | 1.00 | derived |" in result.stdout


@pytest.mark.parametrize("change", [{"protocol": {**META["protocol"], "steps": 10}},
                                    {"protocol": {**META["protocol"], "region": "tokens"}},
                                    {"protocol": {**META["protocol"], "plc": "tokens"}},
                                    {"dataset_fingerprint": {"sha256": "cd" * 32, "files": 5794}},
                                    {"split": "train"}, {"limit": 500}, {"distance": "float32"}])
def test_different_runs_are_not_comparable_unless_forced(tmp_path, change):
    base = write(tmp_path / "base", [{}])
    new = write(tmp_path / "new", [{}], meta={**META, **change})
    result = compare(base, new)
    assert result.exit_code == 2 and "different runs" in result.stderr and "--force" in result.stderr
    assert next(iter(change)) in " ".join(result.stderr.split())
    if "protocol" in change:  # which field of the protocol, and both values
        field = next(k for k in change["protocol"] if change["protocol"][k] != META["protocol"].get(k, k))
        assert f"protocol.{field}" in " ".join(result.stderr.split())
    forced = compare(base, new, "--force", "--format", "markdown")
    assert forced.exit_code == 0 and "despite differences" in forced.stdout


def test_a_run_recorded_before_regions_existed_compares_as_box_and_pixels(tmp_path):
    base = write(tmp_path / "base", [{}])  # its protocol has no region and no plc: it was the paper's box and PLC
    recorded_now = {**META["protocol"], "region": "box", "plc": "pixels"}
    now = write(tmp_path / "now", [{}], meta={**META, "protocol": recorded_now})
    assert compare(base, now).exit_code == 0
    tokens = write(tmp_path / "tokens", [{}], meta={**META, "protocol": {**META["protocol"], "region": "tokens"}})
    result = compare(base, tokens)
    assert result.exit_code == 2 and 'protocol.region: base "box", new "tokens"' in " ".join(result.stderr.split())


def test_a_run_recorded_before_distance_modes_compares_as_float64(tmp_path):
    base = write(tmp_path / "base", [{}])  # no "distance" in its meta.json
    assert compare(base, write(tmp_path / "f64", [{}], meta={**META, "distance": "float64"})).exit_code == 0
    result = compare(base, write(tmp_path / "f32", [{}], meta={**META, "distance": "float32"}))
    assert result.exit_code == 2 and 'distance: base "float64", new "float32"' in " ".join(result.stderr.split())


def test_unusable_inputs_exit_2(tmp_path):
    base = write(tmp_path / "base", [{}])
    assert compare(base, tmp_path / "nowhere").exit_code == 2
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "summary.csv").write_text("model,images\nm,3\n")
    result = compare(base, tmp_path / "junk")
    assert result.exit_code == 2 and "PLC_mean" in result.stderr
    bare = write(tmp_path / "bare", [{}], meta=None)
    result = compare(base, bare)
    assert result.exit_code == 2 and "no meta.json" in result.stderr
    assert compare(base, bare, "--force").exit_code == 0
    assert compare(base, base, "--format", "html").exit_code == 2


def test_several_models_match_by_name(tmp_path):
    metas = {"a": META, "b": META}
    base = write(tmp_path / "base", [{"model": "a"}, {"model": "b"}], per_model_meta=metas)
    new = write(tmp_path / "new", [{"model": "b", "PRC_mean": 3.4}, {"model": "a", "PRC_mean": 3.6}],
                per_model_meta=metas)
    result = compare(base, new, "--format", "markdown")
    assert result.exit_code == 1
    assert "| a | PRC | 3.00 | 3.60 | +0.60 | 0.50 | **FAIL** |" in result.stdout
    assert "| b | PRC | 3.00 | 3.40 | +0.40 | 0.50 | pass |" in result.stdout
    lacking = write(tmp_path / "lacking", [{"model": "a"}], per_model_meta={"a": META})
    result = compare(base, lacking)
    assert result.exit_code == 2 and "no results for b" in result.stderr
    failed = write(tmp_path / "failed", [{"model": "a"}, {"model": "b", **{k: NAN for k in ROW},
                                                          "error": "CheckpointError: truncated"}],
                   per_model_meta=metas)
    result = compare(base, failed, "--format", "markdown")
    assert result.exit_code == 1 and "b failed" in result.stdout and result.stdout.count("**FAIL**") == 5  # AC: derived
    assert compare(failed, base).exit_code == 2  # a baseline without results cannot judge anything


def test_compare_real_runs(tmp_path, tiny_ckpt, image_folder):
    def run(out, *extra):
        args = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--limit", 4, *extra]
        assert runner.invoke(app, [str(a) for a in args]).exit_code == 0

    run(tmp_path / "a", "--steps", 1)
    run(tmp_path / "b", "--steps", 1, "--batch-size", 3)
    run(tmp_path / "c", "--steps", 2)
    same = compare(tmp_path / "a", tmp_path / "b", "--format", "markdown", "--tol", "PAC=0", "--tol", "PLC=0")
    assert same.exit_code == 0 and same.stdout.count("| +0.00 [+0.00, +0.00] |") == 6  # paired, the same images
    assert compare(tmp_path / "a", tmp_path / "c").exit_code == 2
    run(tmp_path / "d", "--steps", 1, "--limit", 6)  # images 0 2 3 4 5 7; a has 3 5 6 7 (random_subset, seed 0)
    shared = compare(tmp_path / "a", tmp_path / "d", "--format", "markdown")
    assert shared.exit_code == 0 and "compared on the 3 images both runs evaluated (base 4, new 6)" in shared.stdout
    assert not math.isnan(pd.read_csv(tmp_path / "a" / "summary.csv").loc[0, "PAC_mean"])


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', "null", "42", "[" * 100000, '{"models": 5}',
                                  '{"models": ["a"]}', '{"models": [{"model": "m", "dir": "../../etc"}]}',
                                  '{"models": [{"model": "m", "dir": 7}]}'])
def test_a_meta_json_that_is_not_a_result_record_exits_2(tmp_path, meta):
    base = write(tmp_path / "base", [{}])
    new = write(tmp_path / "new", [{}], meta=None)
    (new / "meta.json").write_text(meta)
    for args in ((base, new), (new, base), (base, new, "--force")):
        result = compare(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "meta.json" in result.stderr


@pytest.mark.parametrize("csv", [
    "model,images,PLC_mean,PAC_mean,PRC_mean,AC,acc_before,acc_after\nm,1,x,y,z,,[],{}\n",  # not numbers
    "model,images,PLC_mean,PAC_mean,PRC_mean,AC,acc_before,acc_after\n,1,inf,-inf,1e999,nan,1,1\n",  # no name, inf
    "model,images,PLC_mean,PAC_mean,PRC_mean,AC,acc_before,acc_after\n\"a\nb\",1,1,1,1,1,1,1\n",  # newline in a name
])
def test_odd_summary_values_never_pass_silently(tmp_path, csv):
    base = write(tmp_path / "base", [{}])
    new = write(tmp_path / "new", [{}])
    (new / "summary.csv").write_text(csv)
    result = compare(base, new, "--format", "markdown")
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
    if result.exit_code == 1:  # metrics that are not finite numbers are undefined now: they fail
        assert "**FAIL**" in result.stdout


def test_repeated_models_and_huge_files_exit_2(tmp_path, monkeypatch):
    from protobench.run import compare as cmp

    base = write(tmp_path / "base", [{"model": "a"}, {"model": "a"}])
    result = compare(base, base)
    assert result.exit_code == 2 and "more than once" in result.stderr
    new = write(tmp_path / "new", [{}])
    monkeypatch.setattr(cmp, "MAX_INPUT_BYTES", 100)
    result = compare(new, new)
    assert result.exit_code == 2 and "MiB" in result.stderr


def test_markdown_cells_keep_the_table_intact(tmp_path):
    metas = {"a": META, "b": META}
    rows = [{"model": "x|y"}, {"model": "two\nlines"}]
    base = write(tmp_path / "base", rows, per_model_meta=metas)
    top = json.loads((base / "meta.json").read_text())
    top["models"] = [{"model": "x|y", "dir": "a"}, {"model": "two\nlines", "dir": "b"}]
    (base / "meta.json").write_text(json.dumps(top))
    result = compare(base, base, "--format", "markdown")
    assert result.exit_code == 0, result.output
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    shown = len(specs([MISALIGNMENT]))  # the suite these rows measured: one line per model and metric
    assert len(table) == 1 + 2 * shown and all(line.count(" | ") == 6 for line in table)
    assert "| x\\|y | PLC |" in result.stdout and "| two lines | PLC |" in result.stdout


def test_compare_reads_the_metric_table_without_torch():
    """compare and the CLI's tables read protobench.core.metrics; none of them may pull in torch."""
    import subprocess
    import sys

    code = ("import sys, protobench.core.metrics, protobench.run.compare, protobench.cli.tables; "
            "protobench.run.compare.parse_tolerances(['acc=1']); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
