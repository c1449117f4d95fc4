"""The drawn images' tensors, re-run from the run's own checkpoint, data and protocol (docs/report.md).

A run directory keeps numbers only. The attack is deterministic per image (seeded by the seed and
the image's dataset index), so the few images the report draws are evaluated again through the
benchmark loop, after checking that the checkpoint's sha256 and the dataset's fingerprint are the
recorded ones, and their recomputed numbers are checked against per_image.csv (`TOLERANCES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from protobench.report.runs import ReportError, Run

# |re-run - per_image.csv| allowed, absolute, in each column's unit. A run on the CPU re-run on the
# CPU is reproducible (docs/metrics.md, Reproducibility): only float rounding is allowed. With a GPU
# on either side numbers agree to floating-point precision, which 40 sign-gradient steps can
# amplify; p* and the clean prediction must still be the same.
TOLERANCES = {
    "cpu": {"proto": 0, "pred_before": 0, "pred_after": 0, "PRC": 0, "PAC": 1e-3, "PLC": 1e-3,
             "act_before": 1e-4, "act_after": 1e-4},
    "gpu": {"proto": 0, "pred_before": 0, "PRC": 1, "PAC": 1.0, "PLC": 1.0, "act_before": 1e-2,
              "act_after": 5e-2},
}
OTHER_WAYS = "or pass --examples saved (tensors kept by evaluate --save-examples K) or --examples none"


@dataclass
class Pixels:
    """The tensors of the drawn images, on the CPU; row i holds image indices[i]."""

    indices: list[int]
    images: Any  # (N, 3, S, S) clean images, normalized
    images_adv: Any  # (N, 3, S, S) attacked images
    attackable: Any  # (N, 1, S, S) bool: where the attack could change pixels (outside the protected region)
    map_star: Any  # (N, h, w) p*'s similarity map on the clean image (clipped at 0)
    map_star_adv: Any  # (N, h, w) the same on the attacked image
    mean: tuple[float, ...]  # the model's normalization, to show pixels
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)  # class names where the dataset has them
    source: str = ""  # where the tensors came from, in words
    device_type: str = "cpu"  # where they were computed

    def row(self, index: int) -> int:
        return self.indices.index(index)


def chunk_threads_of(run: Run) -> int:
    """The run's --chunk-threads (meta.json's runtime.threads), at most this machine's cores: any count above
    1 gives the same (one-thread) numbers, and a damaged file cannot start more threads than there are cores."""
    import os

    runtime = run.meta.get("runtime")
    threads = runtime.get("threads") if isinstance(runtime, dict) else None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 1:
        return 1
    return max(2, min(threads, os.cpu_count() or 2))


def _is_file(path: str) -> bool:
    """Whether `path` is a file; False for a name no file can have (too long, a NUL byte)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def checkpoint_path(run: Run, override: str | None) -> str:
    """The run's checkpoint, verified: still there and still the same bytes (sha256)."""
    from protobench.checkpoints.formats import sha256

    recorded = run.meta.get("checkpoint_sha256")
    path = override or str(run.meta.get("checkpoint") or "")
    if not path or not _is_file(path):
        raise ReportError(f"the checkpoint of {run.dir} is not at {path or '(none recorded)'} any more (moved or "
                          f"deleted): pass --ckpt with its new path, {OTHER_WAYS}")
    now = sha256(path)
    if now != recorded:
        raise ReportError(f"the checkpoint {path} is not the one {run.dir} measured (sha256 {now[:12]}... now, "
                          f"{str(recorded)[:12]}... recorded): its pictures would not show these numbers; restore "
                          f"it, {OTHER_WAYS}")
    return path


def open_data(run: Run, override: str | None, info: Any):
    """The run's dataset, verified: its fingerprint (file list and sizes) is the recorded one."""
    from protobench.errors import DataError
    from protobench.run.evaluate import load_dataset
    from protobench.run.provenance import dataset_fingerprint_of as fingerprint

    meta = run.meta
    data = override or str(meta.get("dataset"))
    try:
        dataset, _ = load_dataset(data, info, meta.get("dataset_kind"), meta.get("split"),
                                  meta.get("max_image_pixels"))
    except DataError as err:
        raise ReportError(f"the data of {run.dir} cannot be opened at {data} ({err}): moved? pass --data with "
                          f"its new path, {OTHER_WAYS}") from None
    now, recorded = fingerprint(dataset, data), meta.get("dataset_fingerprint")
    if not isinstance(recorded, dict) or now.get("sha256") != recorded.get("sha256"):
        files = recorded.get("files") if isinstance(recorded, dict) else None
        raise ReportError(f"the data at {data} changed since {run.dir} was measured ({now['files']} files, "
                          f"fingerprint {now['sha256'][:12]}... now; {files} files, "
                          f"{str((recorded or {}).get('sha256'))[:12]}... recorded): restore it, {OTHER_WAYS}")
    return dataset


def adapter_of(run: Run, named: str | None = None, trusted: tuple[str, ...] = ()) -> str:
    """The adapter to re-run `run` with: `named` (the user's --adapter), else the one meta.json records
    when it is `auto` or a registered family, or an import path the user typed (`trusted`). A run
    directory never chooses code to import (docs/security.md)."""
    from protobench.models.families import FAMILIES

    if named:
        return named
    recorded = run.meta.get("adapter") or "auto"
    if not isinstance(recorded, str):
        raise ReportError(f"{run.dir / 'meta.json'}: its adapter is not a name (damaged file)")
    if recorded in trusted or recorded == "auto" or (":" not in recorded and recorded in FAMILIES):
        return recorded
    shown = recorded if len(recorded) <= 80 else recorded[:77] + "..."
    if ":" in recorded:
        raise ReportError(f"{run.dir / 'meta.json'} names the adapter {shown!r}, an import path: a run directory "
                          f"never chooses code to import; if you trust that code, name it yourself with --adapter "
                          f"{shown}, {OTHER_WAYS}")
    raise ReportError(f"{run.dir / 'meta.json'} names the model family {shown!r}, which is not installed here: "
                      f"install the plugin that provides it, or pass --adapter package.module:Class if you trust "
                      f"that code, {OTHER_WAYS}")


def adapter_options_of(run: Run) -> dict[str, Any]:
    options = run.meta.get("adapter_options") or {}
    if not isinstance(options, dict):
        raise ReportError(f"{run.dir / 'meta.json'}: its adapter_options are not an object (damaged file)")
    return options


def distance_of(run: Run) -> str:
    from protobench.core.precision import DISTANCES

    distance = run.meta.get("distance") or "float64"  # absent: a run from before --distance, in float64
    if distance not in DISTANCES:
        raise ReportError(f"{run.dir / 'meta.json'}: its distance {str(distance)[:40]!r} is none of "
                          f"{', '.join(DISTANCES)} (damaged file)")
    return distance


def protocol_of(run: Run):
    from protobench.core.protocol import EvalProtocol

    try:
        protocol = EvalProtocol(**run.protocol)
        protocol.check()
    except (TypeError, ValueError) as err:  # OptionError is a ValueError: e.g. a plugin's attack not installed
        raise ReportError(f"{run.dir / 'meta.json'}: cannot redo its protocol ({err})") from None
    return protocol


def rerun(run: Run, indices: list[int], *, ckpt: str | None = None, data: str | None = None,
          adapter: str | None = None, trusted: tuple[str, ...] = (), device: str = "auto",
          log: Callable[[str], None] = lambda _: None) -> tuple[Pixels, pd.DataFrame]:
    """Evaluate the images `indices` again exactly as the run did: their tensors, and their per-image rows.
    `adapter` and `trusted`: see adapter_of. `log` hears what is being done once the checkpoint and
    data are verified."""
    from protobench.run.devices import resolve_device
    from protobench.run.evaluate import load_adapter

    name = adapter_of(run, adapter, trusted)
    path = checkpoint_path(run, ckpt)
    protocol = protocol_of(run)
    adapter = load_adapter(name, path, adapter_options_of(run), resolve_device(device), distance_of(run))
    dataset = open_data(run, data, adapter.info)
    if max(indices) >= len(dataset):
        raise ReportError(f"{run.dir / 'per_image.csv'} names image {max(indices)}, but the data has "
                          f"{len(dataset)} images (damaged file): restore it, or {OTHER_WAYS[3:]}")
    log(f"re-running {len(indices)} images of {run.label} from its verified checkpoint and data to draw them")
    records, skipped, kept = run_again(run, adapter, dataset, indices, protocol)
    if skipped:
        raise ReportError(f"image {dataset.paths[skipped[0]]} of {run.dir} no longer decodes: the data changed; "
                          f"{OTHER_WAYS}")
    pixels = _stack(kept, adapter.info, getattr(dataset, "classes", []), f"re-run from {path}")
    pixels.device_type = adapter.device.type
    return pixels, pd.DataFrame(records)


def run_again(run: Run, adapter: Any, dataset: Any, indices: list[int], protocol: Any
              ) -> tuple[list[dict[str, Any]], list[int], list[dict[str, Any]]]:
    """The images `indices` through the benchmark loop as the run evaluated them: its protocol, and its run
    settings resolved as the run resolved them (run/defaults.run_context, from meta.json's precision,
    distance and chunk threads; no decoding processes). Returns (per-image rows, undecodable indices, the tensors a strip
    draws, on the CPU, one dict per batch)."""
    from protobench.data.imagelist import Subset
    from protobench.run import benchmark
    from protobench.run.defaults import run_context

    context = run_context(adapter.device, adapter.info.input_size, workers=0,
                          precision=str(run.meta.get("precision") or "fp32"), distance=distance_of(run),
                          threads=chunk_threads_of(run))
    kept: list[dict[str, Any]] = []

    def keep(outcome, ids) -> None:
        kept.append({"ids": ids.cpu(), "images": outcome.images.cpu(), "images_adv": outcome.images_adv.cpu(),
                     "attackable": outcome.attackable.cpu(), "map_star": outcome.map_star.cpu(),
                     "map_star_adv": outcome.map_star_adv.cpu()})

    records, skipped = benchmark.run(adapter, Subset(dataset, indices), dataset.paths, protocol, context,
                                     on_outcome=keep)
    return records, skipped, kept


def verified_rerun(run: Run, indices: list[int], force: bool = False, **where: Any) -> tuple[Pixels, list[str]]:
    """rerun, refused (one line) when a re-run number differs from per_image.csv beyond its tolerance,
    unless `force`; the differences found, in words."""
    pixels, recomputed = rerun(run, indices, **where)
    exact = run.meta.get("device_type") == "cpu" and pixels.device_type == "cpu"
    found = mismatches(run, recomputed, exact)
    if found and not force:
        raise ReportError(f"the re-run does not reproduce {run.dir / 'per_image.csv'} ({len(found)} differences; "
                          f"first: {found[0]}): the model, data or code differs from the run's; pass --force to "
                          "draw the re-run anyway, or --examples saved / none")
    return pixels, found


def _stack(kept: list[dict[str, Any]], info: Any, classes: list[str], source: str) -> Pixels:
    import torch

    cat = {key: torch.cat([part[key] for part in kept]) for key in kept[0]}
    return Pixels(indices=[int(i) for i in cat.pop("ids")], mean=tuple(info.mean), std=tuple(info.std),
                  classes=[str(c) for c in classes], source=source, **cat)


def mismatches(run: Run, recomputed: pd.DataFrame, exact: bool) -> list[str]:
    """Each number of the re-run that differs from per_image.csv by more than its tolerance, in words
    (exact: both on the CPU, where the numbers are reproducible)."""
    tolerances = TOLERANCES["cpu" if exact else "gpu"]
    csv = run.per_image.set_index("index")
    found = []
    for row in recomputed.to_dict("records"):
        recorded = csv.loc[row["index"]]
        for column, limit in tolerances.items():
            if not _close(row[column], recorded[column], limit):
                found.append(f"image {row['index']} ({recorded['path']}): {column} {float(row[column]):.6g} re-run, "
                             f"{float(recorded[column]):.6g} in per_image.csv (tolerance {limit:g})")
    return found


def _close(a: Any, b: Any, limit: float) -> bool:
    """Within `limit`, both NaN (a PAC of a zero activation) counting as equal."""
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= limit + 1e-9  # 1e-9: equal values written to and read back from the CSV
