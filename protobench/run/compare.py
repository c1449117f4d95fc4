"""`protobench compare BASE NEW`: did any metric get worse by more than its tolerance?

BASE and NEW are result directories (or their summary.csv). A metric regressed when it moved
in its bad direction by more than its tolerance (absolute, in the metric's own units); with
`--gate significant`, only when its paired 95% interval lies wholly beyond the tolerance. The
metrics, their directions and default tolerances are protobench.core.metrics.METRICS (plugins
included): higher PLC / PAC / PRC / AC is worse, lower accuracy is worse; a metric derived from
others (AC) is reported, never gated. Runs are comparable only with the same protocol (the region
and PLC definition included), prototype distance (`--distance`) and dataset (read from meta.json);
--force compares anyway. Where both runs kept per_image.csv, the attack's seed and --limit may
differ: the deltas are then over the images both evaluated, paired image by image (protobench.run.paired).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from protobench.core.metrics import measured, per_prototype_specs, specs
from protobench.core.protocol import as_recorded_now
from protobench.errors import OptionError, ProtobenchError
from protobench.run import paired
from protobench.run.gates import GATES, judge, parse_tolerances, tolerance_names, verdict  # noqa: F401 (API)
from protobench.run.resume import json_kind

COMPARABLE = ("protocol", "distance", "dataset_fingerprint", "dataset_kind", "split", "limit")
PART_COMPARABLE = ("scorecard",)  # consistency and stability's parameters and part annotations, when both have them
TABLE_COLUMNS = ["model", "metric", "base", "new", "delta", "ci_low", "ci_high", "tolerance", "status"]
SOFT = ("protocol.seed", "limit")  # may differ when both runs kept per_image.csv: compared on the shared images
MAX_INPUT_BYTES = 64 * 2**20  # a summary of thousands of models is under 5 MiB; refuse to load a huge file


class NotComparable(ProtobenchError):
    """Inputs that are missing, unreadable, or runs that measured different things (exit 2)."""

    exit_code = 2


@dataclass
class Entry:
    model: str
    row: dict[str, Any]  # the summary.csv row
    meta: dict[str, Any] | None  # that model's meta.json, if found
    source: str
    folder: Path | None = None  # that model's result directory (its per_prototype.csv), if known


def compare_rows(model: str, base: dict[str, Any], new: dict[str, Any], tol: dict[str, float],
                 gate: str = "tolerance", shared: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> list[dict]:
    """One row per metric of every suite either run measured (a metric one of them lacks: NaN there).
    `shared`: both runs' per-image rows of the same images, for paired deltas and intervals."""
    rows = []
    idx = paired.draws(len(shared[0])) if shared is not None else None
    for spec in measured([base, new]):
        b, n = number_problem(base.get(spec.column)), number_problem(new.get(spec.column))
        values = {"base": b, "new": n, "delta": n - b, "ci_low": math.nan, "ci_high": math.nan}
        found = paired.paired(spec, *shared, idx) if shared is not None and spec.per_prototype is None else None
        values = paired.row_values(found) if found is not None else values
        tolerance = tol.get(spec.name, spec.tolerance)
        status = verdict(spec, values, tolerance, gate)
        rows.append({"model": model, "metric": spec.name, **values, "tolerance": tolerance, "status": status})
    return rows


def number_problem(value: Any) -> float:
    """A metric value; NaN when it is missing, not a number, or infinite (no metric can be)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")
    return number if math.isfinite(number) else float("nan")


def compare(base_path: str, new_path: str, tolerances: dict[str, float], force: bool = False,
            gate: str = "tolerance") -> tuple[pd.DataFrame, list[str]]:
    """(one row per model and metric, notes for the reader); NotComparable when it cannot say."""
    if gate not in GATES:
        raise OptionError(f"--gate {gate!r}: use {' or '.join(GATES)}")
    base, new = load(base_path, force), load(new_path, force)
    notes: list[str] = []
    rows: list[dict] = []
    for b, n in pair(base, new, notes):
        tables = paired.read_per_image(b.folder), paired.read_per_image(n.folder)
        both = all(t is not None for t in tables)
        differ = differences(b.meta, n.meta, soft=both)
        if differ and not force:
            raise NotComparable(f"{b.source} and {n.source} are different runs ({differ}): compare runs of the "
                                "same protocol and dataset, or pass --force")
        if differ:
            notes.append(f"{n.model}: compared despite differences (--force): {differ}")
        if _error(b.row):
            raise NotComparable(f"the baseline {b.source} has no results for {b.model} (error: {_error(b.row)})")
        if _error(n.row):
            notes.append(f"{n.model} failed in {n.source}: {_error(n.row)}")
        shared = None if differ or not both or _error(n.row) else paired.shared_images(*tables)
        if shared is not None and not len(shared[0]):
            raise NotComparable(f"{b.source} and {n.source} evaluated no image in common: compare runs of the "
                                "same images (the same --limit and --seed)")
        notes += paired.run_notes(n.model, b.meta, n.meta, shared, tables, gate)
        rows += compare_rows(n.model, b.row, n.row, tolerances, gate, shared)
        notes += prototype_notes(n.model, b.folder, n.folder, tolerances)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), notes


def regressions(table: pd.DataFrame) -> int:
    return int((table["status"] == "FAIL").sum())


def load(path: str, force: bool) -> list[Entry]:
    """The models of a result directory or summary CSV, each with its meta.json where there is one."""
    p = Path(path)
    summary_path = p / "summary.csv" if p.is_dir() else p
    if not summary_path.is_file():
        raise NotComparable(f"{path}: no such result directory or summary CSV")
    _check_size(summary_path)
    try:
        frame = pd.read_csv(summary_path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise NotComparable(f"{summary_path} is not a readable CSV ({' '.join(str(err).split())})") from None
    columns = [spec.column for spec in specs()]
    if "model" not in frame.columns or frame.empty or not set(columns) & set(frame.columns):
        raise NotComparable(f"{summary_path} is not a protobench summary (empty, no model column, or none of "
                            f"the metric columns {', '.join(columns)})")
    meta = _read_json(summary_path.parent / "meta.json")
    if meta is None and not force:
        raise NotComparable(f"no meta.json beside {summary_path}: cannot check that both runs used the same "
                            "protocol and dataset; pass --force to compare anyway")
    counts = frame["model"].astype(str).value_counts()
    repeated = sorted(counts[counts > 1].index)
    if repeated:
        raise NotComparable(f"{summary_path} names a model more than once ({', '.join(repeated[:3])}): "
                            "not a protobench summary")
    entries = []
    for row in frame.to_dict("records"):
        model = str(row["model"])
        folder = _model_folder(meta, model, summary_path.parent, len(frame))
        model_meta = meta if folder == summary_path.parent else _read_json(folder / "meta.json") if folder else None
        entries.append(Entry(model, row, model_meta, str(path), folder))
    return entries


def _model_folder(meta: dict | None, model: str, root: Path, rows: int) -> Path | None:
    """A multi-model run keeps each model's results in its folder; a single run has them beside the CSV."""
    if meta is None or "models" not in meta:
        return root if rows == 1 else None
    models = meta["models"]
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise NotComparable(f"{root / 'meta.json'}: 'models' is not a list of objects (damaged file)")
    folder = next((m.get("dir", model) for m in models if m.get("model") == model), model)
    if not isinstance(folder, str) or Path(folder).name != folder or folder in ("", ".", ".."):
        raise NotComparable(f"{root / 'meta.json'}: {folder!r} is not a model folder name (damaged file)")
    return root / folder


def _read_json(path: Path) -> dict | None:
    """A meta.json as a dict; None if there is none; NotComparable if it is damaged or not an object."""
    if not path.is_file():
        return None
    _check_size(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or bad UTF-8
        raise NotComparable(f"{path} is not readable JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise NotComparable(f"{path} is not a protobench meta.json (a JSON {json_kind(data)}, not an object)")
    return data


def _check_size(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_INPUT_BYTES:
        raise NotComparable(f"{path} is {size / 2**20:.0f} MiB: not a protobench result file "
                            f"(they are under {MAX_INPUT_BYTES // 2**20} MiB)")


def prototype_notes(model: str, base_dir: Path | None, new_dir: Path | None, tol: dict[str, float]) -> list[str]:
    """How each per-prototype metric moved prototype by prototype (both runs' per_prototype.csv), as
    notes: the gate is the metric's overall value, so single prototypes are reported, never failed."""
    if base_dir is None or new_dir is None:
        return []
    base, new = _prototypes(base_dir / "per_prototype.csv"), _prototypes(new_dir / "per_prototype.csv")
    if base is None or new is None:
        return []
    notes = []
    for spec in per_prototype_specs():
        if spec.name not in base.columns or spec.name not in new.columns:
            continue
        if base["prototype"].tolist() != new["prototype"].tolist():
            notes.append(f"{model}: {spec.name} per prototype not compared: the runs list different prototypes")
            continue
        delta = pd.to_numeric(new[spec.name], errors="coerce") - pd.to_numeric(base[spec.name], errors="coerce")
        worse_by = delta if spec.higher_is_worse else -delta
        limit = tol.get(spec.name, spec.tolerance) + 1e-9
        worse, better = base["prototype"][worse_by > limit].tolist(), base["prototype"][worse_by < -limit].tolist()
        shown = f" ({', '.join(str(p) for p in worse[:10])}{', ...' if len(worse) > 10 else ''})" if worse else ""
        notes.append(f"{model}: {spec.name} per prototype: {len(worse)} of {len(base)} worse by more than "
                     f"{fmt(limit)}{shown}, {len(better)} better")
    return notes


def _prototypes(path: Path) -> pd.DataFrame | None:
    """A per_prototype.csv, or None when there is none; NotComparable when it is not ours."""
    if not path.is_file():
        return None
    _check_size(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise NotComparable(f"{path} is not a readable CSV ({' '.join(str(err).split())})") from None
    if "prototype" not in frame.columns:
        raise NotComparable(f"{path} is not a protobench per_prototype.csv (no prototype column)")
    return frame


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


def differences(base: dict | None, new: dict | None, soft: bool = False) -> str:
    """What makes two runs incomparable, in words ('' when nothing; unknown when a meta.json is missing).
    The attack's seed may differ when every image is evaluated; with `soft` (both runs kept their
    per-image rows, compared on the images they share) so may --limit (SOFT)."""
    from protobench.run.resume import describe_differences

    if base is None or new is None:
        return "a meta.json is missing, so protocol and dataset are unchecked"
    base, new = ({**meta, "protocol": as_recorded_now(meta.get("protocol")),
                  "distance": meta.get("distance", "float64")} for meta in (base, new))  # none recorded: float64
    allowed = SOFT if soft or (base.get("limit") is None and new.get("limit") is None) else ()
    both = [key for key in PART_COMPARABLE if key in base and key in new]  # a run without parts has none
    found = describe_differences(base, new, [*COMPARABLE, *both], ("base", "new"))
    return "; ".join(part for part in found.split("; ") if part and part.split(":")[0] not in allowed)


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
        lines.append(f"| {_cell(r['model'])} | {r['metric']} | {fmt(r['base'])} | {fmt(r['new'])} | "
                     f"{delta_cell(r)} | {fmt(r['tolerance'])} | {status} |")
    lines += [""] + [f"- {_cell(note)}" for note in notes] if notes else []
    return "\n".join(lines) + "\n"


MARKDOWN_SPECIAL = "\\`*_[]|~#!@"  # backslash-escaped: emphasis, links, images, tables, code, mentions, refs
HTML_SPECIAL = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}  # never raw HTML in a comment


def _cell(text: Any) -> str:
    """Text from a file (a model name, a note quoting one) as literal markdown on one line: shown as it
    is, never as formatting, a link, a mention or HTML; a line break or '|' cannot split the table."""
    return "".join(f"\\{c}" if c in MARKDOWN_SPECIAL else HTML_SPECIAL.get(c, c) for c in " ".join(str(text).split()))


def delta_cell(row: dict[str, Any]) -> str:
    """The delta, with its paired 95% interval when there is one: '+2.00 [+0.50, +3.50]'."""
    if math.isnan(row.get("ci_low", math.nan)):
        return fmt(row["delta"], signed=True)
    return f"{fmt(row['delta'], signed=True)} [{fmt(row['ci_low'], True)}, {fmt(row['ci_high'], True)}]"


def fmt(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"
