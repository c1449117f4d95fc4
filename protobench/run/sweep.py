"""Several models in one run: a full result directory per model, one summary row each.

A model that fails to load or run becomes a row with an `error` column instead of ending
the run (as timm's validate.py does), so one broken checkpoint never costs the others.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from protobench.errors import Interrupted, Notice, OptionError, OutputError, ProtobenchError
from protobench.run.evaluate import RESULT_FILES, EvaluateConfig, Progress, evaluate
from protobench.files import TRACEBACK_FILE
from protobench.lock import holds_out
from protobench.run.resume import PARTIAL, RUN

TOP_FILES = ("summary.csv", "meta.json")
# names protobench writes into a result directory: a model's folder must never take one
# ("report": protobench report's default folder)
RESERVED = {name.casefold() for name in (*RESULT_FILES, RUN, PARTIAL, TRACEBACK_FILE, "report")}
MAX_NAME_BYTES = 200  # file systems allow 255; room for the '-N' of a repeat


def pair_adapters(ckpts: Sequence[str], adapters: Sequence[str], default: str) -> list[tuple[str, str]]:
    """(checkpoint, adapter) pairs: no --adapter -> the default for all, one -> it for all, else by position."""
    if not adapters:
        adapters = [default]
    if len(adapters) == 1:
        adapters = list(adapters) * len(ckpts)
    if len(adapters) != len(ckpts):
        raise OptionError(f"{len(ckpts)} --ckpt but {len(adapters)} --adapter: give one --adapter for all "
                          "checkpoints or one per --ckpt, in the same order")
    return list(zip(ckpts, adapters))


def unique_names(ckpts: Sequence[str]) -> list[str]:
    """Folder-safe model names from the checkpoint file stems, numbered where they repeat
    (runs/a/best.pt, runs/b/best.pt -> best, best-2); unique even ignoring case (macOS, Windows)
    and never one of the names protobench writes beside them (meta.json.pt -> meta.json-2)."""
    taken = set(RESERVED)
    names = []
    for ckpt in ckpts:
        base = folder_name(Path(ckpt).stem)
        name, n = base, 1
        while name.casefold() in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name.casefold())
        names.append(name)
    return names


def folder_name(stem: str) -> str:
    """`stem` as one safe path component: no separators or control characters, no leading dot
    ('.', '..', hidden), valid UTF-8 (undecodable bytes become U+FFFD), at most MAX_NAME_BYTES bytes."""
    try:
        name = stem.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # a file name's raw bytes
    except UnicodeEncodeError:  # a lone surrogate from elsewhere
        name = stem.encode("utf-8", "replace").decode("utf-8")
    name = "".join("_" if c in "/\\" or ord(c) < 32 or ord(c) == 127 else c for c in name).lstrip(".")
    while len(name.encode("utf-8")) > MAX_NAME_BYTES:
        name = name[:-1]
    return name or "model"


def check_top(out: Path, names: Sequence[str], overwrite: bool, resume: bool) -> bool:
    """Refuse to mix a new sweep into an earlier or interrupted one in the same directory;
    whether --resume found nothing to resume."""
    from protobench.run import resume as runstate

    if out.exists() and not out.is_dir():
        raise ProtobenchError(f"--out {out} is a file, not a directory")
    if overwrite and resume:
        raise ProtobenchError("--overwrite and --resume contradict each other: choose one")
    existing = [name for name in TOP_FILES if (out / name).exists()]
    existing += [f"{name}/" for name in names if runstate.state(out / name) != "empty"]
    if existing and not (overwrite or resume):
        raise ProtobenchError(f"{out} already holds results ({', '.join(existing)}): pass --resume to continue "
                              "that run, --overwrite to replace it, or choose another --out")
    return resume and not existing


@holds_out(lambda cfg, *_, **__: cfg.out)  # one run writing cfg.out at a time
def evaluate_models(cfg: EvaluateConfig, models: Sequence[tuple[str, str]],
                    progress: Progress | None = None) -> dict[str, Any] | None:
    """Evaluate each (checkpoint, adapter) into cfg.out/<model>/ and write cfg.out/summary.csv and meta.json."""
    from protobench.run import resume as runstate
    from protobench.run.distributed import world
    from protobench.files import check_writable_dir
    from protobench.run.results import check_columns

    cfg.check()
    check_columns()  # every model would fail the same way
    out = Path(cfg.out)
    names = unique_names([c for c, _ in models])
    if check_top(out, names, cfg.overwrite, cfg.resume) and world().main:  # e.g. CI always passing --resume
        warnings.warn(f"nothing to resume in {out}: starting a fresh run", Notice, stacklevel=2)
    check_writable_dir(out)
    rows, entries = [], []
    for name, (ckpt, adapter) in zip(names, models):
        sub = out / name
        sub_cfg = replace(cfg, ckpt=ckpt, adapter=adapter, out=str(sub), name=name, source=dict(cfg.source),
                          resume=cfg.resume and runstate.state(sub) != "empty")
        row = run_one(sub_cfg, progress)
        row.update(ckpt=ckpt, adapter=adapter)
        rows.append(row)
        entries.append({"model": name, "ckpt": ckpt, "adapter": adapter, "dir": name, "error": row.get("error")})
    if not world().main:  # under torchrun, rank 0 writes and reports
        return None
    write_top(out, rows, entries)
    return {"summaries": rows, "out": str(out), "failed": sum(1 for e in entries if e["error"])}


def run_one(cfg: EvaluateConfig, progress: Progress | None) -> dict[str, Any]:
    """One model's summary row, or its error row."""
    from protobench.run.results import error_row

    try:
        result = evaluate(cfg, progress)
        return {**(result["summary"] if result else {"model": cfg.name}), "error": None}  # None: not rank 0
    except (Interrupted, KeyboardInterrupt, OutputError):  # the run's problems, not this model's
        raise
    except ProtobenchError as err:
        return error_row(cfg.name, str(err), cfg.metrics)
    except Exception as err:  # a sweep survives any failure of one model (bad weights, OOM, adapter bugs)
        from protobench.run.failures import out_of_memory, save_traceback

        message = f"{type(err).__name__}: {' '.join(str(err).split()) or 'no message'}"
        if not out_of_memory(err):  # anything else is a bug somewhere: keep the evidence
            message += f" (a bug in protobench, the adapter or torch: {save_traceback(err, cfg.out)})"
        return error_row(cfg.name, message, cfg.metrics)


def write_top(out: Path, rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    import pandas as pd

    from protobench import __version__
    from protobench.run import provenance
    from protobench.run import results

    results.write_csv(out / "summary.csv", pd.DataFrame(rows))
    results.write_json(out / "meta.json", {
        "models": entries,
        "protobench_version": __version__,
        "git": provenance.git_commit(),
        "command": " ".join(["protobench", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
