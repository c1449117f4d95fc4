"""`protobench report`: the evidence behind a run's numbers as one self-contained HTML page and PNG files
(protobench.report; docs/report.md), and evaluate's --report and --save-examples. cli/app.py registers
the command; this module never imports it (no import cycle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from protobench.cli.console import line, run_library, say, warnings_to_console

WORST, BEST = 3, 1  # images drawn per metric (PAC, PLC) by default
REPORT_HELP = "Then write the report (protobench report) into OUT/report [on for the demo, off otherwise]."
SAVE_EXAMPLES_HELP = ("Then keep the tensors of the K worst and K best images by PAC and PLC in "
                      "OUT/examples.safetensors (1.2 MB per image at 224 px), so a report can be drawn without "
                      "the checkpoint.")


def report_command(
    run_dir: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Result directories of protobench "
                                         "evaluate (a multi-model run's directory counts as all of its models)."),
    out: Optional[Path] = typer.Option(None, help="Where to write report.html and its PNGs [RUN_DIR/report; "
                                                  "protobench-results/report for several]."),
    worst: int = typer.Option(WORST, help="Draw the K worst images by PAC and by PLC."),
    best: int = typer.Option(BEST, help="Draw the K best images by PAC and by PLC."),
    examples: str = typer.Option("rerun", help="Where the drawn images come from: rerun (from meta.json's "
                                               "checkpoint and data, both verified), saved (kept by evaluate "
                                               "--save-examples) or none (numbers only)."),
    ckpt: Optional[Path] = typer.Option(None, help="The checkpoint's new place, if it moved (its sha256 is still "
                                                   "checked); one model only."),
    data: Optional[Path] = typer.Option(None, help="The dataset's new place, if it moved (its fingerprint is still "
                                                   "checked); one model only."),
    adapter: Optional[str] = typer.Option(None, help="The adapter to re-run with (a model family or "
                                          "pkg.module:Class); one model only. A run directory's own import path is "
                                          "never imported unless named here."),
    device: str = typer.Option("auto", help="Where to re-run the drawn images: auto, cpu or cuda[:N]."),
    force: bool = typer.Option(False, "--force", help="Draw a re-run whose numbers differ from per_image.csv (the page "
                                           "says so)."),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Where to find the prototypes' source "
                                              "patches (its training split) [the run's dataset's training split; "
                                              "without one, the evaluated data, labelled so]."),
) -> None:
    """Draw a run's evidence: histograms, per-prototype table, the worst and best images (one HTML file + PNGs)."""
    from protobench.report.build import Options

    options = Options(out=str(out) if out else None, worst=worst, best=best, examples=examples,
                      ckpt=str(ckpt) if ckpt else None, data=str(data) if data else None, adapter=adapter, device=device,
                      force=force, train_data=str(train_data) if train_data else None)
    write_report([str(p) for p in run_dir], options)


def write_report(run_dirs: list[str], options: Any) -> dict[str, Any]:
    """Build the report, saying what happens on stderr and where it is on stdout."""
    from protobench.report.build import build_report

    with warnings_to_console():
        result = run_library(build_report, run_dirs, options, lambda text: line("note", "cyan", text))
    for note in result["notes"]:
        line("warning", "yellow", note)
    say(f"report written to {Path(result['html'])} ({result['bytes'] / 2**20:.1f} MB; PNG and CSV files beside it)")
    return result


def check_examples(k: Optional[int]) -> None:
    """evaluate --save-examples K, checked before the run starts."""
    if k is not None:
        from protobench.report.examples import check_count

        run_library(check_count, k)


def keeper(report: Optional[bool], progress: Any) -> Any:
    """evaluate's progress display, wrapped in a report.kept.Keeper that keeps the drawn images' tensors for
    its own report (the display alone without a report)."""
    from protobench.report.kept import Keeper

    return Keeper(max(WORST, BEST), progress) if report else progress


def after_evaluate(out: str, model_dirs: list[str], save_examples: Optional[int], report: bool, device: str,
                   adapters: tuple[str, ...] = (), watched: Any = None) -> None:
    """evaluate's --save-examples (in each model's directory) and --report, once its results are written;
    `adapters`: the --adapter values the user typed (their import paths may be re-run); `watched`: the
    Keeper that watched a one-model run (its tensors spare the report a re-run)."""
    from protobench.report.build import Options
    from protobench.report.examples import save_examples as keep

    if not _attacked(out):  # --metrics without misalignment: no attack, nothing for the report to draw
        if report or save_examples:
            say("no report and no saved examples: this run did not attack (add misalignment to --metrics)")
        return
    with warnings_to_console():
        for run_dir in model_dirs if save_examples else []:
            kept = run_library(keep, run_dir, save_examples, device, adapters, trace_dir=run_dir)
            say(f"kept the tensors of {kept['images']} images (the {kept['k']} worst and best by PAC and PLC) "
                f"in {kept['path']}")
    if report:
        tensors = {str(Path(out).resolve()): watched} if hasattr(watched, "on_outcome") else None
        write_report([out], Options(device=device, up_to=True, trusted=adapters, kept=tensors))
    else:
        say(f"to see the worst images and the per-prototype table: protobench report {out}")


def _attacked(out: str) -> bool:
    """Whether the run in `out` measured misalignment (meta.json's `metrics`; older runs always did)."""
    from protobench.core.metrics import MISALIGNMENT
    from protobench.errors import ProtobenchError
    from protobench.run.resume import read_json_object
    from protobench.run.partpass import recorded

    try:
        return MISALIGNMENT in recorded(read_json_object(Path(out) / "meta.json"))
    except ProtobenchError:
        return True  # let the report itself say what is wrong with the run
