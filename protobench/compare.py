"""`protobench compare BASE NEW`: did any metric get worse by more than its tolerance?

BASE and NEW are result directories (or their summary.csv). A metric regressed when it moved
in its bad direction by more than its tolerance (absolute, in the metric's own units):
higher PLC / PAC / PRC / AC is worse, lower accuracy is worse. Runs are comparable only with
the same protocol and dataset (read from meta.json); --force compares anyway.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from protobench.errors import ProtobenchError

# metric name -> (summary.csv column, default tolerance, higher is worse)
METRICS: dict[str, tuple[str, float, bool]] = {
    "PLC": ("PLC_mean", 1.0, True),  # percentage points of location change
    "PAC": ("PAC_mean", 1.0, True),  # percentage points of activation change
    "PRC": ("PRC_mean", 0.5, True),  # prototypes (mean rank change)
    "AC": ("AC", 1.0, True),  # accuracy points lost to the attack
    "acc_before": ("acc_before", 1.0, False),  # clean top-1 accuracy, %
    "acc_after": ("acc_after", 1.0, False),  # top-1 accuracy under attack, %
}
COMPARABLE = ("protocol", "dataset_fingerprint", "dataset_kind", "split", "limit")
TABLE_COLUMNS = ["model", "metric", "base", "new", "delta", "tolerance", "status"]


class NotComparable(ProtobenchError):
    """Inputs that are missing, unreadable, or runs that measured different things (exit 2)."""

    exit_code = 2


@dataclass
class Entry:
    model: str
    row: dict[str, Any]  # the summary.csv row
    meta: dict[str, Any] | None  # that model's meta.json, if found
    source: str


def parse_tolerances(pairs: Sequence[str]) -> dict[str, float]:
    """Defaults overridden by METRIC=VALUE pairs ('acc' sets acc_before and acc_after)."""
    tol = {name: default for name, (_, default, _) in METRICS.items()}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        names = ["acc_before", "acc_after"] if name == "acc" else [name]
        if not sep or any(n not in METRICS for n in names):
            raise ValueError(f"--tol wants METRIC=VALUE with METRIC one of {', '.join(METRICS)}, acc; got {pair!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--tol {pair!r}: {value!r} is not a number") from None
        if not number >= 0:
            raise ValueError(f"--tol {pair!r}: a tolerance must be zero or positive")
        tol.update({n: number for n in names})
    return tol


def judge(base: float, new: float, tolerance: float, higher_is_worse: bool) -> str:
    """'pass', 'FAIL' (worse by more than the tolerance, or undefined now but not before) or 'n/a'."""
    if math.isnan(new):
        return "n/a" if math.isnan(base) else "FAIL"
    if math.isnan(base):
        return "n/a"
    worse_by = (new - base) if higher_is_worse else (base - new)
    return "FAIL" if worse_by > tolerance + 1e-9 else "pass"  # 1e-9: CSV rounding of equal values


def compare_rows(model: str, base: dict[str, Any], new: dict[str, Any], tol: dict[str, float]) -> list[dict]:
    rows = []
    for name, (column, _, higher_is_worse) in METRICS.items():
        b, n = _number(base.get(column)), _number(new.get(column))
        rows.append({"model": model, "metric": name, "base": b, "new": n, "delta": n - b,
                     "tolerance": tol[name], "status": judge(b, n, tol[name], higher_is_worse)})
    return rows


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def compare(base_path: str, new_path: str, tolerances: dict[str, float],
            force: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """(one row per model and metric, notes for the reader); NotComparable when it cannot say."""
    base, new = load(base_path, force), load(new_path, force)
    notes: list[str] = []
    rows: list[dict] = []
    for b, n in pair(base, new, notes):
        differ = differences(b.meta, n.meta)
        if differ and not force:
            raise NotComparable(f"{b.source} and {n.source} are different runs ({differ}): compare runs of the "
                                "same protocol and dataset, or pass --force")
        if differ:
            notes.append(f"{n.model}: compared despite differences (--force): {differ}")
        if _error(b.row):
            raise NotComparable(f"the baseline {b.source} has no results for {b.model} (error: {_error(b.row)})")
        if _error(n.row):
            notes.append(f"{n.model} failed in {n.source}: {_error(n.row)}")
        rows += compare_rows(n.model, b.row, n.row, tolerances)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), notes


def regressions(table: pd.DataFrame) -> int:
    return int((table["status"] == "FAIL").sum())


def load(path: str, force: bool) -> list[Entry]:
    """The models of a result directory or summary CSV, each with its meta.json where there is one."""
    p = Path(path)
    summary_path = p / "summary.csv" if p.is_dir() else p
    if not summary_path.is_file():
        raise NotComparable(f"{path}: no such result directory or summary CSV")
    try:
        frame = pd.read_csv(summary_path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise NotComparable(f"{summary_path} is not a readable CSV ({err})") from err
    missing = [c for c in ["model", *(col for col, _, _ in METRICS.values())] if c not in frame.columns]
    if missing or frame.empty:
        raise NotComparable(f"{summary_path} is not a protobench summary (empty, or no {', '.join(missing)} column)")
    meta = _read_json(summary_path.parent / "meta.json")
    if meta is None and not force:
        raise NotComparable(f"no meta.json beside {summary_path}: cannot check that both runs used the same "
                            "protocol and dataset; pass --force to compare anyway")
    entries = []
    for row in frame.to_dict("records"):
        model = str(row["model"])
        entries.append(Entry(model, row, _model_meta(meta, model, summary_path.parent, len(frame)), str(path)))
    return entries


def _model_meta(meta: dict | None, model: str, root: Path, rows: int) -> dict | None:
    """A multi-model run keeps each model's meta.json in its folder; a single run has one beside the CSV."""
    if meta is None or "models" not in meta:
        return meta if rows == 1 else None
    folder = next((m.get("dir", model) for m in meta["models"] if m.get("model") == model), model)
    return _read_json(root / folder / "meta.json")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise NotComparable(f"{path} is not readable JSON ({err})") from err


def pair(base: list[Entry], new: list[Entry], notes: list[str]) -> list[tuple[Entry, Entry]]:
    """One model each: compare them whatever their names. Several: match by model name."""
    if len(base) == 1 and len(new) == 1:
        return [(base[0], new[0])]
    by_name = {e.model: e for e in new}
    lacking = [b.model for b in base if b.model not in by_name]
    if lacking:
        raise NotComparable(f"{new[0].source} has no results for {', '.join(lacking)} (in {base[0].source})")
    extra = sorted(set(by_name) - {b.model for b in base})
    if extra:
        notes.append(f"not in the baseline, not compared: {', '.join(extra)}")
    return [(b, by_name[b.model]) for b in base]


def differences(base: dict | None, new: dict | None) -> str:
    """What makes two runs incomparable, in words ('' when nothing; unknown when a meta.json is missing)."""
    from protobench.resume import describe_differences

    if base is None or new is None:
        return "a meta.json is missing, so protocol and dataset are unchecked"
    return describe_differences(base, new, list(COMPARABLE), ("base", "new"))


def _error(row: dict[str, Any]) -> str:
    value = row.get("error")
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def to_markdown(table: pd.DataFrame, notes: list[str]) -> str:
    """A GitHub-flavoured markdown report for CI logs and pull-request comments."""
    failed = regressions(table)
    verdict = f"**{failed} regression{'s' if failed != 1 else ''}**" if failed else "**no regression**"
    lines = [f"### protobench compare: {verdict}", "",
             "| model | metric | base | new | delta | tolerance | status |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in table.to_dict("records"):
        status = "**FAIL**" if r["status"] == "FAIL" else r["status"]
        lines.append(f"| {r['model']} | {r['metric']} | {fmt(r['base'])} | {fmt(r['new'])} | "
                     f"{fmt(r['delta'], signed=True)} | {fmt(r['tolerance'])} | {status} |")
    lines += [""] + [f"- {note}" for note in notes] if notes else []
    return "\n".join(lines) + "\n"


def fmt(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"
