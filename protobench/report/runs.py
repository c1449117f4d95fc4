"""Result directories as the report reads them: one Run per model, with its meta, summary and per-image table.

A RUN_DIR is the --out of a finished `protobench evaluate`: a single model's (meta.json,
summary.csv, per_image.csv) or a multi-model run's (meta.json listing the models, one folder
each). Anything else is refused with one line that says what the directory is and what to do.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from protobench.errors import ProtobenchError
from protobench.run.resume import RUN, json_kind

NEEDED = ("index", "path", "label", "pred_before", "pred_after", "proto", "proto_class", "act_before",
          "act_after", "PAC", "PLC", "PRC")  # per_image.csv columns the report reads
# per_image.csv's whole-number columns and the meta.json figure each one must stay below (None: may be negative)
WHOLE = {"index": ("dataset_images",), "label": ("model_info", "num_classes"),
         "pred_before": ("model_info", "num_classes"), "pred_after": ("model_info", "num_classes"),
         "proto": ("model_info", "num_prototypes"), "proto_class": ("model_info", "num_classes"), "PRC": None}
REAL = ("act_before", "act_after", "PAC", "PLC")  # numbers, NaN allowed (PAC of a zero activation)


class ReportError(ProtobenchError):
    """A result directory, option or file the report cannot use (exit 2)."""


@dataclass
class Run:
    """One model's finished run."""

    dir: Path
    model: str
    meta: dict[str, Any]
    summary: dict[str, Any]  # its summary.csv row
    per_image: pd.DataFrame
    label: str = ""  # how the report names it: unique among the report's runs

    @property
    def n(self) -> int:
        return len(self.per_image)

    @property
    def protocol(self) -> dict[str, Any]:
        protocol = self.meta.get("protocol")
        return protocol if isinstance(protocol, dict) else {}


def load_runs(paths: list[str]) -> tuple[list[Run], list[str]]:
    """Every model of every RUN_DIR, labelled uniquely; and notes (models of a sweep that failed)."""
    if not paths:
        raise ReportError("give at least one RUN_DIR (the --out of protobench evaluate)")
    runs: list[Run] = []
    notes: list[str] = []
    for path in paths:
        found, skipped = _expand(Path(path))
        runs += found
        notes += skipped
    if not runs:
        raise ReportError(f"no model of {', '.join(paths)} has results to report ({'; '.join(notes)})")
    label_runs(runs)
    for run in runs:  # what evaluate warned about (protobench.run.sanity): the page says it too
        recorded = run.meta.get("warnings")
        notes += [f"{run.label}: {w}" for w in (recorded if isinstance(recorded, list) else []) if isinstance(w, str)]
    return runs, notes


def _expand(path: Path) -> tuple[list[Run], list[str]]:
    meta = read_meta(path)
    if "models" not in meta:
        return [load_run(path, meta)], []
    models = meta["models"]
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise ReportError(f"{path / 'meta.json'}: 'models' is not a list of objects (damaged file)")
    runs, notes = [], []
    for entry in models:
        folder = entry.get("dir")
        if not isinstance(folder, str) or Path(folder).name != folder or folder in ("", ".", ".."):
            raise ReportError(f"{path / 'meta.json'}: {folder!r} is not a model folder name (damaged file)")
        if entry.get("error"):
            notes.append(f"{path / folder} failed in the run and has no results: {entry['error']}")
            continue
        runs.append(load_run(path / folder, read_meta(path / folder)))
    return runs, notes


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a finished run; one line saying what `path` is otherwise."""
    if not path.is_dir():
        raise ReportError(f"{path}: no such result directory (give the --out of protobench evaluate)")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        if (path / RUN).is_file():
            raise ReportError(f"{path} holds an interrupted run (no meta.json yet): finish it with the same "
                              "protobench evaluate command plus --resume, then make the report")
        raise ReportError(f"{path} is not a protobench result directory (no meta.json): give the --out of a "
                          "finished protobench evaluate")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise ReportError(f"cannot read {meta_path} ({type(err).__name__}): the run directory is damaged") from None
    if not isinstance(meta, dict):
        raise ReportError(f"{meta_path} is damaged (a JSON {json_kind(meta)}, not an object)")
    return meta


def load_run(path: Path, meta: dict[str, Any]) -> Run:
    per_image = _read_csv(path / "per_image.csv")
    lacking = [c for c in NEEDED if c not in per_image.columns]
    if lacking:
        raise ReportError(f"{path / 'per_image.csv'} lacks the columns {', '.join(lacking)}: not a protobench "
                          "per-image table (or from an older version: run protobench evaluate again)")
    if per_image.empty:
        raise ReportError(f"{path / 'per_image.csv'} has no images: nothing to report")
    check_numbers(path / "per_image.csv", per_image, meta)
    if per_image["index"].duplicated().any():
        raise ReportError(f"{path / 'per_image.csv'} lists an image twice (damaged file)")
    summary = _read_csv(path / "summary.csv")
    if len(summary) != 1:
        raise ReportError(f"{path / 'summary.csv'} has {len(summary)} rows, not one model's summary (damaged file)")
    row = summary.iloc[0].to_dict()
    model = str(meta.get("model") or row.get("model") or path.name)
    return Run(dir=path, model=model, meta=meta, summary=row, per_image=per_image)


def check_numbers(path: Path, per_image: pd.DataFrame, meta: dict[str, Any]) -> None:
    """Every number the report reads is a number, and every index, class and prototype is one the run
    had (meta.json's dataset_images, num_classes, num_prototypes): the columns are made numeric in place."""
    for column in (*WHOLE, *REAL):
        values = pd.to_numeric(per_image[column], errors="coerce")
        bad = values.isna() & per_image[column].notna() | ~np.isfinite(values.fillna(0))
        limit = None
        if column in WHOLE:
            limit = _figure(meta, WHOLE[column])
            bad |= values.isna() | (values % 1 != 0) | ((values < 0) & (WHOLE[column] is not None))
            bad |= values.abs() >= (limit or 2**53)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raw = per_image[column].iloc[row]
            shown = " ".join(raw.split())[:40] if isinstance(raw, str) else f"{raw:.15g}"
            what = ("a finite number" if column in REAL else "a whole number" if WHOLE[column] is None else
                    f"a whole number from 0 to {limit - 1}" if limit is not None else "a whole number >= 0")
            raise ReportError(f"{path}:{row + 2}: {column} is {shown!r}, not {what} (damaged file): restore it, "
                              "or run protobench evaluate again")
        per_image[column] = values.astype("int64") if column in WHOLE else values.astype(float)


def _figure(meta: dict[str, Any], keys: tuple[str, ...] | None) -> int | None:
    """A positive whole number meta.json records (e.g. ('model_info', 'num_classes')), or None."""
    value: Any = meta
    for key in keys or ():
        value = value.get(key) if isinstance(value, dict) else None
    return value if keys and isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ReportError(f"{path} is missing: the run is incomplete (rerun protobench evaluate with --resume, "
                          "which rebuilds summary.csv)")
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ReportError(f"{path} is not a readable CSV ({' '.join(str(err).split())[:200]})") from None


def describe_protocol(protocol: dict[str, Any]) -> str:
    """'pgd, 40 steps, eps 0.4, clipped' (what the numbers were measured with, in words)."""
    if not protocol:
        return "unknown protocol"
    parts = [str(protocol.get("attack", "?"))]
    if protocol.get("attack") == "pgd":
        parts.append(f"{protocol.get('steps')} steps of {protocol.get('step')}")
    parts += [f"eps {protocol.get('eps')}", "clipped" if protocol.get("clip") else "not clipped",
              str(protocol.get("select", "")), f"margin {protocol.get('margin')} px", f"seed {protocol.get('seed')}"]
    name = protocol.get("name")
    return f"{name} protocol: {', '.join(parts)}" if name else ", ".join(parts)


def label_runs(runs: list[Run]) -> None:
    """Model names, with the protocol (then the directory) added where names repeat."""
    for run in runs:
        run.label = run.model
    for add in (_protocol_tag, lambda run: run.dir.name, lambda run: str(run.dir)):
        counts = Counter(run.label for run in runs)
        for run in runs:
            if counts[run.label] > 1:
                run.label = f"{run.label} [{add(run)}]"


def _protocol_tag(run: Run) -> str:
    protocol = run.protocol
    return f"{protocol.get('name', '?')}, {protocol.get('attack', '?')}"


def finite(value: Any) -> float:
    """A summary value as a float; NaN when missing or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number if math.isfinite(number) else float("nan")
