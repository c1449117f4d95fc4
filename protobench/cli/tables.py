"""The CLI's result tables (rich). Names, paths and error messages go in as literal Text."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from protobench.cli.console import literal

METRIC_LABELS = (("PLC", "PLC (location change, %)"), ("PAC", "PAC (activation change, %)"),
                 ("PRC", "PRC (rank change)"))


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=literal(f"protobench: {summary['model']} ({summary['images']} images)"))
    for col in ("metric", "mean", "std", "95% CI", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, label in METRIC_LABELS:
        table.add_row(label, f"{summary[f'{name}_mean']:.2f}", f"{summary[f'{name}_std']:.2f}",
                      literal(f"[{summary[f'{name}_ci_low']:.2f}, {summary[f'{name}_ci_high']:.2f}]"),
                      str(summary[f"{name}_n"]))
    table.add_row("accuracy before / after (%)", f"{summary['acc_before']:.1f} / {summary['acc_after']:.1f}", "", "", "")
    table.add_row("AC (accuracy change, points)", f"{summary['AC']:.1f}", "", "", "")
    return table


def models_table(summaries: list[dict[str, Any]]) -> Table:
    """One line per model of a multi-model run; a failed model shows its error in red."""
    table = Table(title=f"protobench: {len(summaries)} models")
    for col in ("model", "PLC", "PAC", "PRC", "acc before / after", "AC", "error"):
        table.add_column(col, justify="left" if col in ("model", "error") else "right")
    for row in summaries:
        if row.get("error"):
            table.add_row(literal(row["model"]), "", "", "", "", "", literal(row["error"], "red"))
        else:
            table.add_row(literal(row["model"]), *(f"{row[f'{m}_mean']:.2f}" for m in ("PLC", "PAC", "PRC")),
                          f"{row['acc_before']:.1f} / {row['acc_after']:.1f}", f"{row['AC']:.1f}", "")
    return table


def compare_table(table, notes: list[str]) -> Table:
    from protobench.run.compare import fmt, regressions

    failed = regressions(table)
    verdict = Text(f"{failed} regression(s)", style="red") if failed else Text("no regression", style="green")
    caption = Text("\n").join(literal(note) for note in notes) if notes else None
    out = Table(title=Text.assemble("protobench compare: ", verdict), caption=caption)
    for col in ("model", "metric", "base", "new", "delta", "tolerance", "status"):
        out.add_column(col, justify="left" if col in ("model", "metric", "status") else "right")
    for r in table.to_dict("records"):
        status = literal(r["status"], "red" if r["status"] == "FAIL" else "")
        out.add_row(literal(r["model"]), r["metric"], fmt(r["base"]), fmt(r["new"]), fmt(r["delta"], signed=True),
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
    """The registered model families (protobench.models.families.describe); plugins' facts are third-party text."""
    table = Table(title="model families (--adapter NAME)",
                  caption="--adapter auto (the default) tells the family from the checkpoint; "
                          "--adapter package.module:Class loads your own adapter")
    for col in ("name", "family", "paper", "license", "finetune", "source"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(literal(row[col]) for col in ("name", "family", "paper", "license", "finetune", "source")))
    return table
