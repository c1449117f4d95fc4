"""What a run's numbers say, as tables: the per-prototype table, the worst and best images, the header.

Pure pandas on per_image.csv and summary.csv: no torch, no drawing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from protobench.report.runs import ReportError, Run, finite

RANKED = ("PAC", "PLC")  # the metrics whose worst and best images are drawn
PROTOTYPE_COLUMNS = ["proto", "proto_class", "chosen", "PAC_mean", "PLC_mean", "PRC_mean"]


def prototype_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """One row per prototype ever chosen as p*: its class, how often it was chosen, its mean PAC, PLC
    and PRC over those images (a NaN PAC, from a zero activation, left out), most fragile first:
    highest mean PAC, then highest mean PLC, then prototype number."""
    grouped = per_image.groupby("proto", sort=True)
    table = pd.DataFrame({
        "proto": grouped.size().index.astype(int),
        "proto_class": grouped["proto_class"].first().to_numpy(),
        "chosen": grouped.size().to_numpy(),
        "PAC_mean": grouped["PAC"].mean().to_numpy(),
        "PLC_mean": grouped["PLC"].mean().to_numpy(),
        "PRC_mean": grouped["PRC"].mean().to_numpy(),
    })
    order = table.sort_values(["PAC_mean", "PLC_mean", "proto"], ascending=[False, False, True],
                              na_position="last", kind="mergesort")
    return order.reset_index(drop=True)[PROTOTYPE_COLUMNS]


@dataclass(frozen=True)
class Pick:
    """One drawn image: the `rank`-th worst (or best) of the run by `metric`, or its median image."""

    metric: str  # PAC or PLC
    kind: str  # worst, median or best
    rank: int  # 1-based (1 for the median)
    index: int  # the image's dataset index (per_image.csv's `index`)

    @property
    def worst(self) -> bool:
        return self.kind == "worst"

    @property
    def title(self) -> str:
        return f"median by {self.metric}" if self.kind == "median" else f"{self.kind} #{self.rank} by {self.metric}"


def check_counts(run: Run, worst: int, best: int) -> None:
    """--worst / --best: whole numbers from 0 to the images with a value of each ranked metric."""
    for option, k in (("--worst", worst), ("--best", best)):
        if not isinstance(k, int) or k < 0:
            raise ReportError(f"{option} must be a whole number >= 0, got {k}")
        for metric in RANKED:
            n = int(pd.to_numeric(run.per_image[metric], errors="coerce").notna().sum())
            if k > n:
                raise ReportError(f"{option} {k}: {run.label} has only {n} images with a {metric} "
                                  f"({run.dir / 'per_image.csv'}); use {option} {n} or less")


def picks(per_image: pd.DataFrame, worst: int, best: int, median: bool = True) -> list[Pick]:
    """The `worst` highest, the median (the lower middle image of the order) and the `best` lowest images by
    PAC, then by PLC (ties: lower index first; NaN values never picked). An image can be picked more than
    once (worst by PAC and by PLC)."""
    chosen = []
    for metric in RANKED:
        values = pd.to_numeric(per_image[metric], errors="coerce")
        frame = pd.DataFrame({"index": per_image["index"].astype(int), "value": values}).dropna()
        order = list(frame.sort_values(["value", "index"], ascending=[False, True], kind="mergesort")["index"])
        chosen += [Pick(metric, "worst", rank + 1, int(i)) for rank, i in enumerate(order[:worst])]
        if median and order and (worst or best):
            chosen.append(Pick(metric, "median", 1, int(sorted_ascending(frame)[(len(order) - 1) // 2])))
        chosen += [Pick(metric, "best", rank + 1, int(i)) for rank, i in enumerate(sorted_ascending(frame)[:best])]
    return chosen


def sorted_ascending(frame: pd.DataFrame) -> list[int]:
    return list(frame.sort_values(["value", "index"], ascending=[True, True], kind="mergesort")["index"])


def header_rows(run: Run) -> list[dict[str, Any]]:
    """The summary table of the header: each metric's mean, std, 95% CI and n, or its one value."""
    from protobench.core.metrics import measured

    rows = []
    for spec in measured([run.summary]):
        row = {"metric": spec.label, "mean": fmt(run.summary.get(spec.column), spec.decimals),
               "std": "", "ci": "", "n": ""}
        if spec.summary is None:
            low, high = (fmt(run.summary.get(f"{spec.name}_ci_{end}"), spec.decimals) for end in ("low", "high"))
            row.update(std=fmt(run.summary.get(f"{spec.name}_std"), spec.decimals), ci=f"[{low}, {high}]",
                       n=fmt(run.summary.get(f"{spec.name}_n"), 0))
        rows.append(row)
    return rows


def facts(run: Run) -> list[tuple[str, str]]:
    """The header's facts about a run, as (label, value) text: all from meta.json and summary.csv."""
    from protobench.report.runs import describe_protocol

    meta = run.meta
    fingerprint = meta.get("dataset_fingerprint") if isinstance(meta.get("dataset_fingerprint"), dict) else {}
    split = f"split {meta['split']}" if meta.get("split") else "no split"
    data = f"{meta.get('dataset')} ({meta.get('dataset_kind') or 'layout detected'}, {split})"
    zero = finite(run.summary.get("zero_grad_images"))
    return [
        ("model", f"{run.model} ({meta.get('adapter')})"),
        ("checkpoint", str(meta.get("checkpoint"))),
        ("checkpoint sha256", str(meta.get("checkpoint_sha256"))),
        ("data", data),
        ("data fingerprint", f"{fingerprint.get('files')} files, sha256 {fingerprint.get('sha256')}"),
        ("protocol", describe_protocol(run.protocol)),
        ("images", f"{run.n} evaluated of {meta.get('dataset_images')}"
                   + (f" (--limit {meta['limit']})" if meta.get("limit") else "")),
        ("zero-gradient images", f"{fmt(zero, 0)} (images whose pgd gradient was exactly 0 at some step)"),
        ("run", f"{meta.get('date')}, protobench {meta.get('protobench_version')}, torch "
                f"{meta.get('torch_version')}, {meta.get('device')}, {meta.get('precision')}"),
        ("directory", str(run.dir)),
    ]


def fmt(value: Any, decimals: int = 2) -> str:
    number = finite(value)
    return "-" if math.isnan(number) else f"{number:.{decimals}f}"
