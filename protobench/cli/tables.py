"""The CLI's result tables (rich). Names, paths and error messages go in as literal Text."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from protobench.cli.console import literal
from protobench.core.metrics import measured


def number_problem(value: Any, decimals: int) -> str:
    """A metric's value; 'nan' where a row lacks it (a run finished before a plugin metric was added)."""
    return f"{float('nan') if value is None else value:.{decimals}f}"


def summary_table(summary: dict[str, Any]) -> Table:
    """One row per metric the run measured (protobench.core.metrics): mean, std, CI and n of a
    per-image metric (n images) or a per-prototype one (n prototypes), the one value of a run-level
    figure (accuracy)."""
    table = Table(title=literal(f"protobench: {summary['model']} ({summary['images']} images)"))
    for col in ("metric", "mean", "std", "95% CI", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for spec in measured([summary]):
        d = spec.decimals
        value = number_problem(summary.get(spec.column), d)
        if spec.summary is not None:
            table.add_row(literal(spec.label), value, "", "", "")
            continue
        low, high = (number_problem(summary.get(f"{spec.name}_ci_{end}"), d) for end in ("low", "high"))
        table.add_row(literal(spec.label), value, number_problem(summary.get(f"{spec.name}_std"), d),
                      literal(f"[{low}, {high}]"), str(summary.get(f"{spec.name}_n", "")))
    return table


def models_table(summaries: list[dict[str, Any]]) -> Group:
    """One line per model of a multi-model run (each metric's mean or value); the models that
    failed are listed under it with their errors, in red (a column would squeeze the table)."""
    metrics = measured(summaries)
    table = Table(title=f"protobench: {len(summaries)} models")
    table.add_column("model", overflow="fold")
    for spec in metrics:
        table.add_column(spec.name, justify="right")
    failed = []
    for row in summaries:
        if row.get("error"):
            table.add_row(literal(row["model"]), *(["-"] * len(metrics)))
            failed.append(literal(f"{row['model']} failed: {row['error']}", "red"))
        else:
            table.add_row(literal(row["model"]), *(number_problem(row.get(s.column), s.decimals) for s in metrics))
    return Group(table, *failed)


def compare_table(table, notes: list[str]) -> Table:
    from protobench.run.compare import delta_cell, fmt, regressions

    failed = regressions(table)
    verdict = Text(f"{failed} regression(s)", style="red") if failed else Text("no regression", style="green")
    caption = Text("\n").join(literal(note) for note in notes) if notes else None
    out = Table(title=Text.assemble("protobench compare: ", verdict), caption=caption)
    for col in ("model", "metric", "base", "new", "delta", "tolerance", "status"):
        out.add_column(col, justify="left" if col in ("model", "metric", "status") else "right")
    for r in table.to_dict("records"):
        status = literal(r["status"], "red" if r["status"] == "FAIL" else "")
        out.add_row(literal(r["model"]), r["metric"], fmt(r["base"]), fmt(r["new"]), delta_cell(r),
                    fmt(r["tolerance"]), status)
    return out


def before_after_table(before: dict[str, Any], after: dict[str, Any]) -> Table:
    from protobench.train.finetune import side_by_side

    table = Table(title=f"protobench finetune: before and after ({after['images']} images, lower = better aligned)")
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for label, old, new, change in side_by_side(before, after):
        table.add_row(label, f"{old:.2f}", f"{new:.2f}", f"{change:+.2f}")
    return table


def adapters_table(rows: list[dict[str, str]]) -> Table:
    """The registered model families (protobench.cli.families.describe); plugins' facts are third-party text."""
    table = Table(title="model families (--adapter NAME)",
                  caption="--adapter auto (the default) tells the family from the checkpoint; "
                          "--adapter package.module:Class loads your own adapter")
    for col in ("name", "family", "paper", "license", "finetune", "source"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(literal(row[col]) for col in ("name", "family", "paper", "license", "finetune", "source")))
    return table
