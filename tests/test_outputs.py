"""Outputs that cannot be written, and bugs: one line each, the right exit code, nothing lost."""

import errno
import os
import tempfile

import pytest
import torch
from typer.testing import CliRunner

from protobench.run import resume as runstate
from protobench.cli.app import app
from test_cli import assert_one_line_error

runner = CliRunner()


def assert_error_after_progress(result, *needles):
    """One error line (after any plain progress lines of the run), no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def unwritable(tmp_path):
    """Places no one can write to, root included: under /proc, and below a file."""
    (tmp_path / "file.txt").write_text("x")
    return ["/proc/protobench-test/out", tmp_path / "file.txt" / "out"]


def test_evaluate_and_finetune_refuse_an_unwritable_out(tmp_path, tiny_ckpt, image_folder):
    for out in unwritable(tmp_path):
        for command in (["evaluate", "--ckpt", tiny_ckpt], ["evaluate", "--ckpt", tiny_ckpt, "--ckpt", tiny_ckpt],
                        ["finetune", "--ckpt", tiny_ckpt, "--epochs", 1, "--last-epochs", 0, "--batch-size", 4]):
            result = invoke(*command, "--data", image_folder, "--out", out)
            assert_one_line_error(result, f"cannot write {out}")
            assert result.exit_code == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-555 directory")
def test_a_read_only_directory(tmp_path, tiny_ckpt, image_folder):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", locked / "o")
    assert_one_line_error(result, "cannot write", "Permission denied")


def test_convert_refuses_a_directory_and_an_unwritable_path(tmp_path, tiny_ckpt):
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    assert_one_line_error(invoke("convert", tiny_ckpt, folder, "--overwrite"), "is a directory")
    assert_one_line_error(invoke("convert", tiny_ckpt, "/proc/protobench-test.safetensors"), "cannot write")
    (tmp_path / "file.safetensors").write_text("x")
    assert_one_line_error(invoke("convert", tiny_ckpt, tmp_path / "file.safetensors" / "x.safetensors"), "cannot write")


def test_convert_onto_its_source_keeps_a_good_file(tmp_path, tiny_ckpt):
    from safetensors.torch import load_file

    before = load_file(tiny_ckpt)
    assert invoke("convert", tiny_ckpt, tiny_ckpt, "--overwrite").exit_code == 0
    after = load_file(tiny_ckpt)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_full_disk_mid_run_keeps_what_was_done(tmp_path, tiny_ckpt, image_folder, monkeypatch):
    args = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--steps", 1, "--batch-size", 4]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert invoke(*args, "--out", full).exit_code == 0
    calls, real = [], os.fsync

    def fsync(fd):  # the partial log's second write fails as on a full disk
        if os.readlink(f"/proc/self/fd/{fd}").endswith(runstate.PARTIAL):
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(runstate.os, "fsync", fsync)
    result = invoke(*args, "--out", cut)
    assert_error_after_progress(result, "cannot write", "No space left on device", "free some space",
                                "4 of 12 images are kept", "--resume")
    assert result.exit_code == 2
    monkeypatch.undo()
    assert len(runstate.read_partial(cut)[0]) >= 4  # the first batch is kept
    assert invoke(*args, "--out", cut, "--resume").exit_code == 0
    for name in ("per_image.csv", "summary.csv"):
        assert (full / name).read_bytes() == (cut / name).read_bytes()


def test_final_files_that_cannot_be_written_keep_the_results(tmp_path, tiny_ckpt, image_folder, monkeypatch):
    from protobench.run import results

    real = results.write_csv
    monkeypatch.setattr(results, "write_csv", lambda path, frame: (_ for _ in ()).throw(
        __import__("protobench.errors", fromlist=["OutputError"]).OutputError(f"cannot write {path}: disk full")))
    args = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--steps", 1]
    assert_error_after_progress(invoke(*args), "cannot write", "--resume")
    monkeypatch.setattr(results, "write_csv", real)
    assert runstate.state(tmp_path / "o") == "partial"
    assert invoke(*args, "--resume").exit_code == 0 and runstate.state(tmp_path / "o") == "complete"


def test_a_bug_is_one_line_exit_3_with_the_traceback_saved(tmp_path, tiny_ckpt, image_folder, monkeypatch):
    from protobench.run import benchmark

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(benchmark, "evaluate_batch", broken)
    out = tmp_path / "o"
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out)
    assert_error_after_progress(result, "bug in protobench", "TypeError", "unsupported operand",
                                str(out / "protobench-traceback.txt"))
    assert result.exit_code == 3
    saved = (out / "protobench-traceback.txt").read_text()
    assert saved.startswith("Traceback") and "def broken" not in result.stderr and "in broken" in saved


def test_a_bug_without_an_output_directory_goes_to_a_temporary_file(tmp_path, monkeypatch):
    from protobench.run import compare

    monkeypatch.setattr(compare, "compare", lambda *a: {}["boom"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = invoke("compare", tmp_path, tmp_path)
    assert_one_line_error(result, "KeyError", str(tmp_path / "protobench-traceback-"))
    assert result.exit_code == 3
    assert len(list(tmp_path.glob("protobench-traceback-*.txt"))) == 1


def test_running_out_of_memory_is_not_called_a_bug(tmp_path, tiny_ckpt, image_folder, monkeypatch):
    from protobench.run import evaluate as ev

    monkeypatch.setattr(ev, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its traceback file goes here, not to /tmp
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o")
    assert_one_line_error(result, "out of memory (MemoryError)", "--batch-size")
    assert result.exit_code == 2
