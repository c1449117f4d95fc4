"""`protobench compare BASE NEW`: did any metric get worse (protobench.run.compare; docs/ci.md)?
cli/app.py registers the command."""

from __future__ import annotations

from pathlib import Path

import typer

from protobench.cli.console import fail, out_console, run_library
from protobench.cli.helptext import METRIC_NAMES


def compare_command(
    base: Path = typer.Argument(..., help="Baseline: a result directory or its summary.csv."),
    new: Path = typer.Argument(..., help="Candidate: a result directory or its summary.csv."),
    tol: list[str] = typer.Option([], "--tol", help=f"METRIC=VALUE, absolute ({METRIC_NAMES} acc, and plugin "
                                                     "metrics); defaults in docs/ci.md."),
    format: str = typer.Option("table", "--format", help="table or markdown."),
    force: bool = typer.Option(False, help="Compare runs of different protocols or datasets anyway."),
    gate: str = typer.Option("tolerance", help="tolerance: fail a metric worse by more than its tolerance; "
                                               "significant: only when its paired 95% interval lies wholly beyond "
                                               "the tolerance (docs/ci.md)."),
) -> None:
    """Exit 0 if no metric of NEW is worse than BASE by more than its tolerance, 1 if one is, 2 if unusable."""
    from protobench.run import compare as cmp
    from protobench.cli.tables import compare_table

    if format not in ("table", "markdown"):
        fail(f"unknown --format {format!r}: use table or markdown")
    tolerances = run_library(cmp.parse_tolerances, tol)
    table, notes = run_library(cmp.compare, str(base), str(new), tolerances, force, gate)
    if format == "markdown":
        text = cmp.to_markdown(table, notes)
        print(text.encode("utf-8", "backslashreplace").decode("utf-8"), end="")
    else:
        out_console.print(compare_table(table, notes))
    if cmp.regressions(table):
        raise typer.Exit(1)
