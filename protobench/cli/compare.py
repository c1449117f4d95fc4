"""`protobench compare BASE NEW`: did any metric get worse (protobench.compare; docs/ci.md)?
cli/app.py registers the command."""

from __future__ import annotations

from pathlib import Path

import typer

from protobench.cli.console import fail, out_console, run_library
from protobench.cli.helptext import TOL_HELP


def compare_command(
    base: Path = typer.Argument(..., metavar="BASE", help="Baseline: a result directory or its summary.csv."),
    new: Path = typer.Argument(..., metavar="NEW", help="Candidate: a result directory or its summary.csv."),
    tol: list[str] = typer.Option([], "--tol", metavar="METRIC=VALUE", help=TOL_HELP),
    format: str = typer.Option("table", "--format", metavar="NAME", help="table or markdown."),
    force: bool = typer.Option(False, "--force", help="Compare runs of different protocols or datasets anyway."),
    gate: str = typer.Option("tolerance", metavar="NAME", help="tolerance: fail a metric worse by more than its "
                             "tolerance; significant: only when its paired 95% interval lies wholly beyond the "
                             "tolerance (docs/ci.md)."),
) -> None:
    """Exit 0 if no metric of NEW is worse than BASE by more than its tolerance, 1 if one is, 2 if unusable."""
    from protobench.api.tools import compare as run_compare
    from protobench.cli.tables import compare_table

    if format not in ("table", "markdown"):
        fail(f"unknown --format {format!r}: use table or markdown")
    found = run_library(run_compare, str(base), str(new), tol, force, gate)
    if format == "markdown":
        print(found.markdown().encode("utf-8", "backslashreplace").decode("utf-8"), end="")
    else:
        out_console.print(compare_table(found.table, found.notes))
    if found.regressions:
        raise typer.Exit(1)
