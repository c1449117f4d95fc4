"""Results on disk while a run is going, so an interrupted run can continue (`--resume`).

A result directory is in one of three states:
- empty: nothing of ours in it;
- partial: `run.json` (what the run is: protocol, checkpoint, dataset...) and
  `per_image.partial.jsonl`, one JSON line per image appended and fsynced every batch
  (under torchrun, rank r > 0 appends to `per_image.partial.rank<r>.jsonl`);
- complete: `meta.json` exists (it is written last, after per_image.csv and summary.csv).

A kill at any moment leaves at worst a truncated last line, which reading drops: every
image on a complete line is done, and the rest are computed again on --resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from protobench.errors import ProtobenchError
from protobench.files import writing
from protobench.run.results import write_json
from protobench.run.partpass import DEFAULT_METRICS, IDENTITY_KEYS, recorded

PARTIAL = "per_image.partial.jsonl"
RUN = "run.json"
FINAL = ("per_image.csv", "per_prototype.csv", "convergence.csv", "summary.csv", "meta.json")


def state(out: Path) -> str:
    """'complete', 'partial' or 'empty'."""
    if (out / "meta.json").is_file():
        return "complete"
    if (out / RUN).is_file():
        return "partial"
    return "empty"


def check_out(out: Path, overwrite: bool, resume: bool) -> str:
    """Refuse to mix runs: existing results need --overwrite, an interrupted run --resume."""
    if out.exists() and not out.is_dir():
        raise ProtobenchError(f"--out {out} is a file, not a directory")
    if overwrite and resume:
        raise ProtobenchError("--overwrite and --resume contradict each other: choose one")
    current = state(out)
    stray = [name for name in FINAL if (out / name).exists()]
    if resume and current != "empty":
        return current
    if overwrite or (current == "empty" and not stray):
        return "empty"
    if current == "partial":
        raise ProtobenchError(f"{out} holds an interrupted run: add --resume to continue it "
                              "or --overwrite to start again")
    if resume:  # result files without meta.json: not a run this version wrote, nor one it can continue
        raise ProtobenchError(f"nothing to resume in {out} (no {RUN} or meta.json, but {', '.join(stray)}): "
                              "pass --overwrite to start again or choose another --out")
    raise ProtobenchError(f"{out} already holds results ({', '.join(stray)}): "
                          "pass --overwrite to replace them or choose another --out")


def partial_files(out: Path) -> list[Path]:
    """Every rank's partial log (one file unless the run was sharded by torchrun)."""
    return sorted(out.glob("per_image.partial*.jsonl"))


def clear(out: Path) -> None:
    with writing(out):
        for name in (*FINAL, RUN):
            (out / name).unlink(missing_ok=True)
        for path in partial_files(out):
            path.unlink()


def start(out: Path, identity: dict[str, Any]) -> None:
    """Record what this run is, before its first result."""
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        for path in partial_files(out):
            path.unlink()
    write_json(out / RUN, identity)


def recorded_identity(out: Path) -> dict[str, Any]:
    name = "meta.json" if state(out) == "complete" else RUN
    return read_json_object(out / name)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from one of our files; a one-line error if it is damaged or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or bad UTF-8
        raise ProtobenchError(f"cannot read {path} ({type(err).__name__}: {err}): use --overwrite to start "
                              "again") from None
    if not isinstance(data, dict):
        raise ProtobenchError(f"{path} is damaged (a JSON {json_kind(data)}, not an object): use --overwrite "
                              "to start again")
    return data


def json_kind(value: Any) -> str:
    """JSON's name for the type of a parsed value."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def check_identity(recorded: dict[str, Any], current: dict[str, Any], out: Path) -> None:
    """--resume continues only the same run: same protocol, checkpoint, dataset, subset, device type,
    metrics (a default run records none: then the recorded run must have none either)."""
    from protobench.core.protocol import as_recorded_now

    current = json.loads(json.dumps(current, default=str))  # as it would read back from disk
    recorded = {**recorded, "protocol": as_recorded_now(recorded.get("protocol"))}  # a run begun by an older version
    differ = describe_differences(recorded, current, list(dict.fromkeys([*current, *IDENTITY_KEYS])))
    if differ:
        raise ProtobenchError(f"--resume: {out} holds a different run ({differ}); "
                              "rerun with the original options or use --overwrite / another --out")


def describe_differences(old: dict[str, Any], new: dict[str, Any], keys: list[str],
                         labels: tuple[str, str] = ("recorded", "now")) -> str:
    """'protocol.steps: recorded 2, now 3; ...' for each of `keys` that differs ('' if none);
    inside dicts, only the sub-keys that differ are named."""
    parts = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            parts += [(f"{key}.{k}", a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            parts.append((key, a, b))
    return "; ".join(f"{name}: {labels[0]} {_short(a)}, {labels[1]} {_short(b)}" for name, a, b in parts)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


class PartialLog:
    """Appends per-image records (and skipped indices) to per_image.partial.jsonl, durably."""

    def __init__(self, out: Path, rank: int = 0):
        self.path = out / (PARTIAL if rank == 0 else f"per_image.partial.rank{rank}.jsonl")
        with writing(self.path):
            self.file = open(self.path, "a", encoding="utf-8")

    def append(self, rows: list[dict[str, Any]], skipped: list[int]) -> None:
        lines = [json.dumps(row) for row in rows] + [json.dumps({"skipped": int(i)}) for i in skipped]
        if not lines:
            return
        with writing(self.path):
            self.file.write("\n".join(lines) + "\n")  # one write per batch
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> PartialLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_partial(out: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """(records, skipped indices) from the complete lines of every partial log."""
    records: list[dict[str, Any]] = []
    skipped: list[int] = []
    for path in partial_files(out):
        _read_log(path, records, skipped)
    return records, skipped


def _read_log(path: Path, records: list[dict[str, Any]], skipped: list[int]) -> None:
    """Append one log's complete lines; a torn last line is cut off the file."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:  # drop what a kill left half-written
            f.truncate(end)
    for number, line in enumerate(data[:end].splitlines(), 1):
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):
            item = None
        if isinstance(item, dict) and _is_index(item.get("skipped")):
            skipped.append(item["skipped"])
        elif isinstance(item, dict) and _is_index(item.get("index")):
            records.append(item)
        else:
            raise ProtobenchError(f"{path}:{number} is damaged: use --overwrite to start again")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def finish(out: Path) -> None:
    """After the final files are written: the partial state is no longer needed."""
    (out / RUN).unlink(missing_ok=True)
    for path in partial_files(out):
        path.unlink()



def load_finished(out: Path) -> dict[str, Any]:
    """The summary and meta of a finished run (what evaluate returned). A deleted summary.csv is
    rebuilt from per_image.csv: it is a function of that table, the model name and the seed."""
    meta = recorded_identity(out)
    if not (out / "per_image.csv").is_file():
        raise ProtobenchError(f"{out} holds a finished run, but its per_image.csv is missing and the per-image "
                              "log it was made from is gone: restore the file, or rerun with --overwrite")
    if not (out / "summary.csv").is_file():
        rebuild_summary(out, meta)
    summary = read_summary(out / "summary.csv", recorded(meta))
    summary["model"] = meta.get("model", summary.get("model"))  # the name as given ('NA' reads back as NaN)
    return {"summary": summary, "meta": meta, "out": str(out)}


def _read_table(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, engine="python", converters={"model": str})  # python float(): the exact values that were written
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ProtobenchError(f"cannot read {path} ({type(err).__name__}): restore it, or rerun with "
                              "--overwrite") from None


def rebuild_summary(out: Path, meta: dict[str, Any]) -> None:
    import warnings

    import pandas as pd

    from protobench.core.metrics import per_prototype_specs
    from protobench.errors import Notice
    from protobench.run.results import per_image_columns, summarize, write_csv

    suites = recorded(meta)
    per_image = _read_table(out / "per_image.csv")
    missing = [c for c in per_image_columns(suites) if c not in per_image.columns]
    seed = meta.get("seed", 0)
    if missing or not isinstance(seed, int):
        raise ProtobenchError(f"cannot rebuild {out / 'summary.csv'}: per_image.csv or meta.json is damaged: "
                              "rerun with --overwrite")
    per_prototype = None
    if per_prototype_specs(suites):  # the per-prototype metrics' summaries come from their own table
        if not (out / "per_prototype.csv").is_file():
            raise ProtobenchError(f"cannot rebuild {out / 'summary.csv'}: per_prototype.csv is missing too: "
                                  "restore it, or rerun with --overwrite")
        per_prototype = _read_table(out / "per_prototype.csv")
    row = summarize(per_image, str(meta.get("model")), seed, suites, per_prototype)
    write_csv(out / "summary.csv", pd.DataFrame([row]))
    warnings.warn(f"{out / 'summary.csv'} was missing: rebuilt it from per_image.csv", Notice, stacklevel=2)


def read_summary(path: Path, suites: tuple[str, ...] = DEFAULT_METRICS) -> dict[str, Any]:
    """The one row of a single-model summary.csv, every metric of `suites` a number (NaN allowed)."""
    from protobench.run.results import error_row

    frame = _read_table(path)
    wanted = [k for k in error_row("", "", suites) if k not in ("model", "error")]
    row = frame.iloc[0].to_dict() if len(frame) == 1 else {}
    bad = [k for k in wanted if not isinstance(row.get(k), (int, float)) or isinstance(row.get(k), bool)]
    if bad:
        raise ProtobenchError(f"{path} is damaged ({'not one row' if not row else 'bad ' + ', '.join(bad[:3])}): "
                              "delete it and rerun with --resume to rebuild it from per_image.csv")
    return row
