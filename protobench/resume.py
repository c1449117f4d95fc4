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
from protobench.results import write_json

PARTIAL = "per_image.partial.jsonl"
RUN = "run.json"
FINAL = ("per_image.csv", "summary.csv", "meta.json")


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
    if resume:
        if current == "empty":
            raise ProtobenchError(f"nothing to resume in {out} (no {RUN}): run without --resume to start")
        return current
    stray = [name for name in FINAL if (out / name).exists()]
    if overwrite or (current == "empty" and not stray):
        return "empty"
    if current == "partial":
        raise ProtobenchError(f"{out} holds an interrupted run: add --resume to continue it "
                              "or --overwrite to start again")
    raise ProtobenchError(f"{out} already holds results ({', '.join(stray)}): "
                          "pass --overwrite to replace them or choose another --out")


def partial_files(out: Path) -> list[Path]:
    """Every rank's partial log (one file unless the run was sharded by torchrun)."""
    return sorted(out.glob("per_image.partial*.jsonl"))


def clear(out: Path) -> None:
    for name in (*FINAL, RUN):
        (out / name).unlink(missing_ok=True)
    for path in partial_files(out):
        path.unlink()


def start(out: Path, identity: dict[str, Any]) -> None:
    """Record what this run is, before its first result."""
    out.mkdir(parents=True, exist_ok=True)
    for path in partial_files(out):
        path.unlink()
    write_json(out / RUN, identity)


def recorded_identity(out: Path) -> dict[str, Any]:
    name = "meta.json" if state(out) == "complete" else RUN
    try:
        return json.loads((out / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ProtobenchError(f"cannot read {out / name} ({err}): use --overwrite to start again") from err


def check_identity(recorded: dict[str, Any], current: dict[str, Any], out: Path) -> None:
    """--resume continues only the same run: same protocol, checkpoint, dataset, subset, device type."""
    current = json.loads(json.dumps(current, default=str))  # as it would read back from disk
    differ = describe_differences(recorded, current, list(current))
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
        name = PARTIAL if rank == 0 else f"per_image.partial.rank{rank}.jsonl"
        self.file = open(out / name, "a", encoding="utf-8")

    def append(self, rows: list[dict[str, Any]], skipped: list[int]) -> None:
        lines = [json.dumps(row) for row in rows] + [json.dumps({"skipped": int(i)}) for i in skipped]
        if not lines:
            return
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
        except json.JSONDecodeError:
            raise ProtobenchError(f"{path}:{number} is damaged: use --overwrite to start again") from None
        if "skipped" in item:
            skipped.append(int(item["skipped"]))
        else:
            records.append(item)


def finish(out: Path) -> None:
    """After the final files are written: the partial state is no longer needed."""
    (out / RUN).unlink(missing_ok=True)
    for path in partial_files(out):
        path.unlink()

