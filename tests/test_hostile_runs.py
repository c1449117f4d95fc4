"""Run directories as a careless or hostile colleague could hand them over: a report or compare of them
never imports code, never ends in a bug (exit 3), and says in one line what is wrong (docs/security.md)."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import markdown_it
import pytest

from report_fixtures import copy, finished, invoke  # noqa: F401 - finished is a fixture
from test_cli import assert_one_line_error


def set_meta(run, **fields):
    meta = json.loads((run / "meta.json").read_text())
    meta.update(fields)
    (run / "meta.json").write_text(json.dumps(meta))


def set_cell(path, row, column, value):
    rows = list(csv.reader(path.read_text().splitlines()))
    rows[row + 1][rows[0].index(column)] = value
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """A module on sys.path that leaves a file behind if anything imports it; its name is unique."""
    name = f"pbmarker_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "code"
    folder.mkdir()
    trace = tmp_path / "imported.txt"
    (folder / f"{name}.py").write_text(textwrap.dedent(f"""
        open({str(trace)!r}, "w").write("imported")
        from protobench.adapters.protopnet import ProtoPNetAdapter

        class Tiny(ProtoPNetAdapter):
            pass
    """))
    monkeypatch.syspath_prepend(str(folder))
    yield name, trace
    sys.modules.pop(name, None)


@pytest.mark.parametrize("recorded, needle", [
    ("{m}:Tiny", "an import path"),  # a module:Class
    ("{m}.sub.mod:X", "an import path"),  # a dotted path
    ("{m}", "not installed here"),  # a plugin family that is not installed
    ("this:X", "an import path"),  # the standard library's own side effect
])
def test_a_recorded_adapter_is_never_imported(finished, tmp_path, marker, recorded, needle):  # noqa: F811
    name, trace = marker
    run = copy(finished, tmp_path)
    set_meta(run, adapter=recorded.format(m=name))
    result = invoke("report", run, "--out", tmp_path / "r")
    assert_one_line_error(result, "meta.json", needle, "--adapter", "--examples none")
    assert result.exit_code == 2
    assert not trace.exists() and name not in sys.modules and "Zen of Python" not in result.output
    assert not (tmp_path / "r").exists()


def test_an_import_path_the_user_names_is_used(finished, tmp_path, marker):  # noqa: F811
    name, trace = marker
    run = copy(finished, tmp_path)
    set_meta(run, adapter=f"{name}:Tiny")
    result = invoke("report", run, "--out", tmp_path / "r", "--adapter", f"{name}:Tiny")
    assert result.exit_code == 0, result.output
    assert trace.exists() and (tmp_path / "r" / "report.html").is_file()


def test_evaluate_reports_with_the_import_path_it_was_given(tmp_path, tiny_ckpt, image_folder, marker):
    name, trace = marker
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--steps", 1,
                    "--adapter", f"{name}:Tiny", "--save-examples", 1, "--report")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "examples.safetensors").is_file() and (tmp_path / "o" / "report" / "report.html").is_file()


def test_compare_markdown_shows_file_text_literally(tmp_path):
    from test_compare import write

    name = '<script>alert(1)</script> *b* [x](https://e.example) @someone | `c` \\ &amp; _u_\nnext'
    base = write(tmp_path / "base", [{"model": name, "PAC_mean": 10.0}])
    new = write(tmp_path / "new", [{"model": name, "PAC_mean": 12.0}])
    result = invoke("compare", base, new, "--format", "markdown")
    assert result.exit_code == 1, result.output
    assert "<script" not in result.stdout and "](" not in result.stdout.replace("\\](", "")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(result.stdout)
    assert "<script" not in html and "<a " not in html and "<em>" not in html and "<code>" not in html
    cells = [line for line in html.splitlines() if line.startswith("<td>") and "script" in line]
    assert cells and cells[0] == "<td>" + " ".join(name.split()).replace("&", "&amp;").replace("<", "&lt;").replace(
        ">", "&gt;") + "</td>"


@pytest.mark.parametrize("column, value, needle", [
    ("index", "50", "index is '50', not a whole number from 0 to 11"),  # past the dataset's 12 images
    ("PAC", "abc", "PAC is 'abc', not a finite number"),
    ("proto", "1e15", "proto is '1e+15', not a whole number from 0 to 5"),  # the model has 6 prototypes
    ("label", "-1", "label is '-1', not a whole number from 0 to 2"),
    ("PLC", "inf", "PLC is 'inf', not a finite number"),
])
@pytest.mark.parametrize("examples", ["rerun", "none"])
def test_damaged_per_image_numbers_are_one_line(finished, tmp_path, column, value, needle, examples):  # noqa: F811
    run = copy(finished, tmp_path)
    set_cell(run / "per_image.csv", 0, column, value)
    result = invoke("report", run, "--out", tmp_path / "r", "--examples", examples)
    assert_one_line_error(result, "per_image.csv:2:", needle, "damaged")
    assert result.exit_code == 2


def test_an_image_past_the_dataset_is_refused_even_when_meta_agrees(finished, tmp_path):  # noqa: F811
    run = copy(finished, tmp_path)
    set_meta(run, dataset_images=100)
    set_cell(run / "per_image.csv", 0, "index", "50")
    set_cell(run / "per_image.csv", 0, "PAC", "1000")  # the worst image: it is drawn
    result = invoke("report", run, "--out", tmp_path / "r")
    assert_one_line_error(result, "names image 50, but the data has 12 images")
    assert result.exit_code == 2


@pytest.mark.parametrize("distance", ["float16", ["float32"]])
def test_a_damaged_distance_is_refused_before_the_rerun(finished, tmp_path, distance):  # noqa: F811
    run = copy(finished, tmp_path)
    set_meta(run, distance=distance)
    result = invoke("report", run, "--out", tmp_path / "r")
    assert_one_line_error(result, "meta.json: its distance", "none of float64, float32", "damaged")
    assert result.exit_code == 2

@pytest.fixture
def small_disk(tmp_path):
    """A 16 KiB filesystem (a tmpfs): needs root; skipped elsewhere."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_convert_onto_a_full_disk(tmp_path, tiny_ckpt, small_disk):
    result = invoke("convert", tiny_ckpt, small_disk / "out.safetensors")
    assert_one_line_error(result, f"cannot write {small_disk / 'out.safetensors'}", "No space left on device",
                          "free some space")
    assert result.exit_code == 2 and list(small_disk.iterdir()) == []


def test_safetensors_io_errors_are_output_errors(tmp_path, tiny_ckpt, monkeypatch):
    """The same, where no filesystem can be mounted: safetensors' own report of a full disk."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "out.safetensors"
    result = invoke("convert", tiny_ckpt, out)
    assert_one_line_error(result, f"cannot write {out}", "No space left on device", "free some space")
    assert result.exit_code == 2 and sorted(os.listdir(tmp_path)) == ["tiny.safetensors"]


def hold(path):
    """Another process holding the output lock of `path` until its stdin closes."""
    code = ("import sys; from protobench.lock import holding\n"
            f"with holding({str(path)!r}):\n    print('held', flush=True); sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_into_the_same_out_is_refused(tmp_path, tiny_ckpt, image_folder):
    out = tmp_path / "o"
    evaluate = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--steps", 1]
    holder = hold(out)
    try:
        for args in (evaluate, evaluate + ["--ckpt", tiny_ckpt],
                     ["finetune", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--epochs", 1]):
            result = invoke(*args)
            assert_one_line_error(result, f"another protobench run is writing {out}")
            assert result.exit_code == 2
        assert list(out.iterdir()) == []  # nothing of theirs in the other run's directory
    finally:
        holder.stdin.close()
        holder.wait()
    assert invoke(*evaluate).exit_code == 0
    holder = hold(out / "report")
    try:
        result = invoke("report", out)
        assert_one_line_error(result, f"another protobench run is writing {out / 'report'}")
    finally:
        holder.kill()  # the lock goes with the process, however it ends
        holder.wait()
    assert invoke("report", out).exit_code == 0


def test_a_refused_run_leaves_no_directory(tmp_path, tiny_ckpt):
    out = tmp_path / "a" / "b"
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", tmp_path / "missing", "--out", out)
    assert result.exit_code == 2 and not (tmp_path / "a").exists()


def test_a_report_cut_by_a_full_disk_is_replaced_by_its_rerun(finished, tmp_path, monkeypatch):  # noqa: F811
    from protobench import files

    def full(path, text):
        with files.writing(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "atomic_write_text", full)
    out = tmp_path / "r"
    result = invoke("report", finished, "--out", out, "--examples", "saved", "--worst", 1)
    assert_one_line_error(result, "No space left on device")
    assert result.exit_code == 2 and not (out / "report.html").exists() and list(out.glob("*.png"))
    monkeypatch.undo()
    result = invoke("report", finished, "--out", out, "--examples", "saved", "--worst", 1)
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def parts_folder(root, lines):
    """The 12-image ImageFolder of the other tests with a parts.csv of `lines` (after the header)."""
    from conftest import write_image_folder

    write_image_folder(root)
    (root / "parts.csv").write_text("\n".join(["image,part,x,y,visible", *lines]) + "\n")
    return root


SCORECARD = ["--metrics", "misalignment,consistency,stability", "--steps", 1]


@pytest.mark.parametrize("kind", ["fifo", "zero", "directory"])
def test_a_parts_csv_that_is_no_file_is_said_so(tmp_path, tiny_ckpt, kind):
    data = parts_folder(tmp_path / "data", [])
    (data / "parts.csv").unlink()
    if kind == "fifo":
        os.mkfifo(data / "parts.csv")
    elif kind == "zero":
        (data / "parts.csv").symlink_to("/dev/zero")
    else:
        (data / "parts.csv").mkdir()  # not a 4th class folder
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", data, "--out", tmp_path / "o", *SCORECARD)
    assert_one_line_error(result, f"{data / 'parts.csv'} is not a file")
    assert result.exit_code == 2


def test_a_refused_storage_reads_as_a_sentence(tmp_path):
    from protobench.models.lookup import AutoAdapter
    from protobench.errors import CheckpointError
    from test_hostile_checkpoints import stride_zero

    path, _ = stride_zero(tmp_path)
    with pytest.raises(CheckpointError) as err:
        AutoAdapter.load(str(path))
    assert ": it holds a tensor of shape (9999999, 4, 1, 1) that reaches past its storage of 1 elements" in str(err.value)


def part_run(tmp_path, tiny_ckpt, coordinate, visible):
    lines = [f"class{c}/img{i}.png,{part},{coordinate},{coordinate},{visible}"
             for c in range(3) for i in range(4) for part in ("beak", "tail")]
    data = parts_folder(tmp_path / "data", lines)
    return invoke("evaluate", "--ckpt", tiny_ckpt, "--data", data, "--out", tmp_path / "o", *SCORECARD)


@pytest.mark.parametrize("coordinate, visible", [("1e300", 1), ("-5", 1), ("", 0)])
def test_parts_never_inside_an_image_leave_the_scores_undefined(tmp_path, tiny_ckpt, coordinate, visible):
    import pandas as pd

    result = part_run(tmp_path, tiny_ckpt, coordinate, visible)
    assert result.exit_code == 0, result.output
    assert "invalid value" not in result.output and "RuntimeWarning" not in result.output
    assert "warning: no annotated part fell inside any evaluated image" in result.stderr
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert any(w.startswith("no annotated part fell inside") for w in meta["warnings"])
    summary = pd.read_csv(tmp_path / "o" / "summary.csv").iloc[0]
    assert summary[["consistency_mean", "stability_mean"]].isna().all()
    assert summary["consistency_n"] == 0 and summary["stability_n"] == 0
    table = pd.read_csv(tmp_path / "o" / "per_prototype.csv")
    assert table[["consistency", "stability"]].isna().all().all() and (table["images"] == 4).all()


def test_parts_inside_the_images_give_no_warning(tmp_path, tiny_ckpt):
    result = part_run(tmp_path, tiny_ckpt, "20", 1)  # the images are 40 px: every part inside
    assert result.exit_code == 0 and "no annotated part" not in result.output
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert not any("no annotated part" in w for w in meta["warnings"])


def test_accuracy_at_or_below_chance_is_a_warning_everywhere(tmp_path):
    """The demo's test images exported with their class folders named in reverse order."""
    from protobench.demo import DEMO_CKPT

    data = tmp_path / "data"
    assert invoke("demo", "export", data, "--n", 12).exit_code == 0
    names = sorted(p.name for p in data.iterdir())
    for name in names:
        (data / name).rename(data / f"tmp-{name}")
    for old, new in zip(names, reversed(names)):
        (data / f"tmp-{old}").rename(data / new)
    out = tmp_path / "o"
    result = invoke("evaluate", "--ckpt", DEMO_CKPT, "--data", data, "--out", out, "--steps", 1,
                    "--select", "gt-protos")
    assert result.exit_code == 0, result.output
    told = "clean accuracy is 0.0%, at or below chance (16.7% for 6 classes)"
    assert f"warning: {told}" in result.stderr and "class" in result.stderr and "normalisation" in result.stderr
    assert any(w.startswith(told) for w in json.loads((out / "meta.json").read_text())["warnings"])
    result = invoke("report", out, "--examples", "none")
    assert result.exit_code == 0 and told in result.stderr
    assert told in (out / "report" / "report.html").read_text()


def test_a_model_above_chance_gets_no_accuracy_warning():
    from protobench.run.sanity import accuracy_warning

    assert accuracy_warning({"acc_before": 16.7}, 6) is None  # chance is 100 / 6 = 16.67
    assert accuracy_warning({"acc_before": 16.6}, 6) is not None
    assert accuracy_warning({"acc_before": 50.0}, 2) is not None and accuracy_warning({"acc_before": 50.1}, 2) is None
    assert accuracy_warning({}, 6) is None  # a run without the attack suite has no accuracy


def test_class_names_the_checkpoint_records_are_checked(tmp_path, tiny_adapter, image_folder):
    path = tmp_path / "named.safetensors"
    tiny_adapter.save(str(path), extra={"classes": json.dumps(["class0", "class2", "class1"])})
    result = invoke("evaluate", "--ckpt", path, "--data", image_folder, "--out", tmp_path / "o", "--steps", 1)
    assert_one_line_error(result, "classes are not the ones the checkpoint records", "the same names in another order",
                          "2 of 3 differ, first class 1: 'class1' here, 'class2' in the checkpoint")
    assert result.exit_code == 2
    tiny_adapter.save(str(path), extra={"classes": json.dumps(["class0", "class1", "class2"])})
    assert invoke("convert", path, tmp_path / "copy.safetensors").exit_code == 0  # the names travel with the model
    result = invoke("evaluate", "--ckpt", tmp_path / "copy.safetensors", "--data", image_folder, "--out",
                    tmp_path / "o2", "--steps", 1)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o2" / "meta.json").read_text())["model_info"]["classes"] == ["class0", "class1",
                                                                                                 "class2"]


def test_damaged_class_names_are_refused(tmp_path, tiny_adapter, image_folder):
    path = tmp_path / "named.safetensors"
    for names in ('{"a": 1}', '["a", 3]', '["a", "b"]', "not json"):
        tiny_adapter.save(str(path), extra={"classes": names})
        result = invoke("evaluate", "--ckpt", path, "--data", image_folder, "--out", tmp_path / "o", "--steps", 1)
        assert_one_line_error(result, str(path), "class names")
        assert result.exit_code == 2


def test_finetune_records_the_class_names_it_trained_on(tmp_path, tiny_ckpt, image_folder):
    from safetensors import safe_open

    out = tmp_path / "ft"
    result = invoke("finetune", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--epochs", 1,
                    "--last-epochs", 0, "--batch-size", 4, "--no-eval")
    assert result.exit_code == 0, result.output
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["classes"]) == ["class0", "class1", "class2"]
