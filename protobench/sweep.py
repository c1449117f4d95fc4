"""Several models in one run: a full result directory per model, one summary row each.

A model that fails to load or run becomes a row with an `error` column instead of ending
the run (as timm's validate.py does), so one broken checkpoint never costs the others.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from protobench.errors import Interrupted, ProtobenchError
from protobench.evaluate import EvaluateConfig, Progress, evaluate

TOP_FILES = ("summary.csv", "meta.json")


def pair_adapters(ckpts: Sequence[str], adapters: Sequence[str], default: str) -> list[tuple[str, str]]:
    """(checkpoint, adapter) pairs: no --adapter -> the default for all, one -> it for all, else by position."""
    if not adapters:
        adapters = [default]
    if len(adapters) == 1:
        adapters = list(adapters) * len(ckpts)
    if len(adapters) != len(ckpts):
        raise ValueError(f"{len(ckpts)} --ckpt but {len(adapters)} --adapter: give one --adapter for all "
                         "checkpoints or one per --ckpt, in the same order")
    return list(zip(ckpts, adapters))


def unique_names(ckpts: Sequence[str]) -> list[str]:
    """Checkpoint file stems, numbered where they repeat (runs/a/best.pt, runs/b/best.pt -> best, best-2)."""
    stems = [Path(c).stem for c in ckpts]
    counts = Counter(stems)
    seen: Counter[str] = Counter()
    names = []
    for stem in stems:
        seen[stem] += 1
        names.append(stem if counts[stem] == 1 or seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def check_top(out: Path, names: Sequence[str], overwrite: bool, resume: bool) -> None:
    """Refuse to mix a new sweep into an earlier or interrupted one in the same directory."""
    from protobench import resume as runstate

    existing = [name for name in TOP_FILES if (out / name).exists()]
    existing += [f"{name}/" for name in names if runstate.state(out / name) != "empty"]
    if existing and not (overwrite or resume):
        raise ProtobenchError(f"{out} already holds results ({', '.join(existing)}): pass --resume to continue "
                              "that run, --overwrite to replace it, or choose another --out")


def evaluate_models(cfg: EvaluateConfig, models: Sequence[tuple[str, str]],
                    progress: Progress | None = None) -> dict[str, Any] | None:
    """Evaluate each (checkpoint, adapter) into cfg.out/<model>/ and write cfg.out/summary.csv and meta.json."""
    from protobench import resume as runstate

    out = Path(cfg.out)
    names = unique_names([c for c, _ in models])
    check_top(out, names, cfg.overwrite, cfg.resume)
    rows, entries = [], []
    for name, (ckpt, adapter) in zip(names, models):
        sub = out / name
        sub_cfg = replace(cfg, ckpt=ckpt, adapter=adapter, out=str(sub), name=name,
                          resume=cfg.resume and runstate.state(sub) != "empty")
        row = run_one(sub_cfg, progress)
        row.update(ckpt=ckpt, adapter=adapter)
        rows.append(row)
        entries.append({"model": name, "ckpt": ckpt, "adapter": adapter, "dir": name, "error": row.get("error")})
    from protobench.distributed import world

    if not world().main:  # under torchrun, rank 0 writes and reports
        return None
    write_top(out, rows, entries)
    return {"summaries": rows, "out": str(out), "failed": sum(1 for e in entries if e["error"])}


def run_one(cfg: EvaluateConfig, progress: Progress | None) -> dict[str, Any]:
    """One model's summary row, or its error row."""
    from protobench.results import error_row

    try:
        result = evaluate(cfg, progress)
        return {**(result["summary"] if result else {"model": cfg.name}), "error": None}  # None: not rank 0
    except (Interrupted, KeyboardInterrupt):
        raise
    except ProtobenchError as err:
        return error_row(cfg.name, str(err))
    except Exception as err:  # a sweep survives any failure of one model (bad weights, OOM, adapter bugs)
        message = " ".join(str(err).split()) or "no message"
        return error_row(cfg.name, f"{type(err).__name__}: {message}")


def write_top(out: Path, rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    import pandas as pd

    from protobench import __version__, provenance, results

    results.write_csv(out / "summary.csv", pd.DataFrame(rows))
    results.write_json(out / "meta.json", {
        "models": entries,
        "protobench_version": __version__,
        "git": provenance.git_commit(),
        "command": " ".join(["protobench", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
