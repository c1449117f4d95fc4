"""User text through rich is shown literally: paths, file and model names, error rows, notes.

Names that look like rich markup: `a[/]b` (a closing tag with nothing to close crashed the
printer), `[bold]x` (silently lost its brackets) and `[link=http://x]y`.
"""

import io
import json
import shutil

import pandas as pd
from rich.console import Console
from typer.testing import CliRunner

from conftest import write_image_folder
from protobench.cli.app import app
from protobench.cli.progress import RichProgress
from test_cli import assert_one_line_error

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text):
    return " ".join(text.split())


def test_error_lines_show_paths_literally(tmp_path, image_folder):
    for name in ("a[/]b.pt", "[bold]x[/bold].pt", "[link=http://x]y.pt"):
        ckpt = tmp_path / name  # a path with markup in it: 'a[' / ']b.pt' for the first
        result = invoke("evaluate", "--ckpt", ckpt, "--data", image_folder, "--out", tmp_path / "o")
        assert_one_line_error(result, str(ckpt), "not found")
        assert result.exit_code == 2


def test_undecodable_image_with_markup_in_its_path_is_warned_and_logged(tmp_path, tiny_ckpt):
    root = tmp_path / "w[" / "]z"  # the image paths contain 'w[/]z'
    write_image_folder(root)
    (root / "class0" / "[bold]x.png").write_bytes(b"not a png")
    out = tmp_path / "o"
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", root, "--out", out, "--steps", 1)
    assert result.exit_code == 0, result.output
    bad = str(root / "class0" / "[bold]x.png")
    assert f"warning: skipped image {bad}: " in result.stderr
    assert json.loads((out / "meta.json").read_text())["skipped_images"] == [bad]


def test_a_batch_is_logged_before_its_warnings_are_printed(tmp_path, tiny_ckpt, image_folder, monkeypatch):
    """Whatever printing a warning does, the batch is already in the partial log: --resume keeps it."""
    from protobench.run import evaluate as ev
    from protobench.run import resume as runstate

    (tmp_path / "data" / "class0" / "broken.png").write_bytes(b"no")
    monkeypatch.setattr(ev, "report_skipped", lambda indices, *a: (_ for _ in ()).throw(KeyboardInterrupt)
                        if indices else None)
    out = tmp_path / "o"
    assert invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--steps", 1,
                  "--batch-size", 13).exit_code == 130
    records, skipped = runstate.read_partial(out)
    assert len(records) == 12 and len(skipped) == 1


def test_model_names_in_tables_and_messages(tmp_path, tiny_ckpt, image_folder):
    marked = tmp_path / "[red]m[-red].safetensors"
    shutil.copy(tiny_ckpt, marked)
    result = invoke("evaluate", "--ckpt", marked, "--data", image_folder, "--out", tmp_path / "one", "--steps", 1,
                    "--limit", 2)
    assert result.exit_code == 0, result.output
    assert "protobench: [red]m[-red] (2 images)" in result.stdout

    broken = tmp_path / "[bold]b.pt"
    broken.write_bytes(b"<!DOCTYPE html><html>login</html>")
    result = invoke("evaluate", "--ckpt", marked, "--ckpt", broken, "--data", image_folder,
                    "--out", tmp_path / "[i]many", "--steps", 1, "--limit", 2)
    assert result.exit_code == 1, result.output
    text = flat(result.stdout)
    assert "[red]m[-red]" in text and "[bold]b" in text and "HTML" in text
    assert f"results written to {tmp_path / '[i]many'}/" in text


def test_progress_descriptions_are_literal():
    for terminal in (False, True):
        stream = io.StringIO()
        progress = RichProgress(Console(file=stream, force_terminal=terminal, width=200), every=0)
        progress.start(2, "a[/]b")
        progress.update([{"PAC": 1.0}, {"PAC": 3.0}], [])
        progress.stop()
        assert "a[/]b" in stream.getvalue()


def test_compare_table_and_notes_are_literal(tmp_path):
    meta = {"protocol": {"steps": 1}, "dataset_kind": "x", "split": None, "limit": None, "dataset_fingerprint": "f"}
    row = {"images": 1, "PLC_mean": 1.0, "PAC_mean": 1.0, "PRC_mean": 1.0, "AC": 0.0, "acc_before": 50.0,
           "acc_after": 50.0}
    names = ["a[/]b", "[link=http://x]y"]
    for directory, models in (("base", names[:1]), ("new", names)):
        (tmp_path / directory).mkdir()
        pd.DataFrame([{"model": m, **row} for m in models]).to_csv(tmp_path / directory / "summary.csv", index=False)
        for i, m in enumerate(models):
            (tmp_path / directory / f"m{i}").mkdir()
            (tmp_path / directory / f"m{i}" / "meta.json").write_text(json.dumps(meta))
        top = {"models": [{"model": m, "dir": f"m{i}"} for i, m in enumerate(models)]}
        (tmp_path / directory / "meta.json").write_text(json.dumps(top))
    result = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "new")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "a[/]b" in result.stdout and "not compared: [link=http://x]y" in flat(result.stdout)
