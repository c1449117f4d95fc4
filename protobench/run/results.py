"""Records -> tables: per-image rows, per-prototype rows, one summary row per model, and atomic file
writes. Which columns there are follows the suites a run measured (`evaluate --metrics`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from protobench.run.diagnostics import COLUMNS as DIAGNOSTICS
from protobench.core.metrics import MetricSpec, per_image_specs, per_prototype_specs, specs, suites as all_suites
from protobench.run.partpass import DEFAULT_METRICS, needs_attack, part_columns
from protobench.registry import RegistryError
from protobench.files import atomic_write_text

# per_image.csv: these, then one column per per-image metric, then the attack's diagnostics, then the
# part pass's columns (protobench.run.partpass); without the attack, only the first four
RECORD_COLUMNS = ["index", "path", "label", "pred_before", "pred_after", "proto", "proto_class",
                  "act_before", "act_after"]
CLEAN_COLUMNS = 4  # index, path, label, pred_before: what a run without the attack records
DIAGNOSTIC_COLUMNS = ["zero_grad", "zero_grad_steps", "protected_frac", *DIAGNOSTICS]


SUMMARY_COLUMNS = ["model", "images", "zero_grad_images", "collapsed_images", "error", "ckpt", "adapter"]  # sweeps add the last 3
PROTOTYPE_COLUMNS = ["prototype", "class", "images"]  # per_prototype.csv, then the per-prototype metrics'


def per_image_columns(suites: Sequence[str] = DEFAULT_METRICS) -> list[str]:
    """per_image.csv's columns for the chosen suites, registered metrics included (docs/metrics.md,
    Output files)."""
    attack = needs_attack(suites)
    own = (RECORD_COLUMNS + DIAGNOSTIC_COLUMNS) if attack else RECORD_COLUMNS[:CLEAN_COLUMNS]
    metrics = _unclaimed([spec.name for spec in per_image_specs(suites)], RECORD_COLUMNS + DIAGNOSTIC_COLUMNS)
    return [*own[:len(RECORD_COLUMNS)], *metrics, *own[len(RECORD_COLUMNS):], *part_columns(suites)]


def summary_columns(suites: Sequence[str] = DEFAULT_METRICS) -> list[str]:
    """summary.csv's columns for one model."""
    metrics = _unclaimed([col for spec in specs(suites) for col in spec.summary_columns], SUMMARY_COLUMNS)
    return ["model", "images", *metrics, *(["zero_grad_images", "collapsed_images"] if needs_attack(suites) else [])]


def check_columns(suites: Sequence[str] | None = None) -> None:
    """RegistryError now, before any work, if a registered metric would write over a column."""
    chosen = suites or all_suites()
    per_image_columns(chosen)
    summary_columns(chosen)
    _unclaimed([spec.name for spec in per_prototype_specs(chosen)], PROTOTYPE_COLUMNS + ["part", "part_frac"])


def _unclaimed(columns: list[str], taken: list[str]) -> list[str]:
    """`columns`, unless a metric would write over one of protobench's own columns."""
    clash = [c for c in columns if c in taken]
    if clash:
        raise RegistryError(f"a registered metric writes the column {clash[0]!r}, which protobench's tables "
                            "already have: rename the metric")
    return columns


def bootstrap_ci(values: np.ndarray, seed: int, n_boot: int = 1000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so reruns agree)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(per_image: pd.DataFrame, model: str, seed: int = 0, suites: Sequence[str] = DEFAULT_METRICS,
              per_prototype: pd.DataFrame | None = None) -> dict[str, Any]:
    """One summary row: each metric's summary (for a per-image metric: mean/std/n/95% CI, NaNs such
    as the PAC of a zero activation left out; for a per-prototype metric the same over prototypes),
    then, with the attack, the images with a zero-gradient step."""
    row: dict[str, Any] = {"model": model, "images": len(per_image)}
    for spec in specs(suites):
        row.update(summary_of(spec, per_prototype if spec.per_prototype is not None else per_image, seed))
    if needs_attack(suites):
        row["zero_grad_images"] = int(per_image["zero_grad"].astype(bool).sum()) if len(per_image) else 0
        row["collapsed_images"] = _count(per_image, "collapsed")
    return row


def _count(per_image: pd.DataFrame, column: str) -> int:
    """Images whose boolean `column` is true (0 where a table from an older version lacks it)."""
    if column not in per_image or not len(per_image):
        return 0
    return int(per_image[column].fillna(False).astype(bool).sum())


def summary_of(spec: MetricSpec, table: pd.DataFrame, seed: int) -> dict[str, Any]:
    """The summary.csv columns of one metric, from the per-image (or per-prototype) table."""
    if spec.summary is not None:
        return {spec.name: spec.summary(table)}
    name = spec.name
    values = table[name].to_numpy(dtype=float) if len(table) else np.array([])
    values = values[np.isfinite(values)]
    low, high = bootstrap_ci(values, seed)
    return {f"{name}_mean": float(values.mean()) if len(values) else float("nan"),
            f"{name}_std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
            f"{name}_n": int(len(values)), f"{name}_ci_low": low, f"{name}_ci_high": high}


def error_row(model: str, error: str, suites: Sequence[str] = DEFAULT_METRICS) -> dict[str, Any]:
    """The summary row of a model that failed to load or run: every metric NaN, and why."""
    row: dict[str, Any] = {key: float("nan") for key in summary_columns(suites)}
    row.update(model=model, error=error)
    return row


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
