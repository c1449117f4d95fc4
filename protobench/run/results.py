"""Records -> tables: per-image rows, one summary row per model, and atomic file writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from protobench.core.metrics import MetricSpec, per_image_specs, specs
from protobench.registry import RegistryError
from protobench.files import atomic_write_text

# per_image.csv: these, then one column per per-image metric, then the attack's diagnostics
RECORD_COLUMNS = ["index", "path", "label", "pred_before", "pred_after", "proto", "proto_class",
                  "act_before", "act_after"]
DIAGNOSTIC_COLUMNS = ["zero_grad", "zero_grad_steps", "protected_frac"]


SUMMARY_COLUMNS = ["model", "images", "zero_grad_images", "error", "ckpt", "adapter"]  # sweeps add the last 3


def per_image_columns() -> list[str]:
    """per_image.csv's columns, registered metrics included (docs/metrics.md, Output files)."""
    metrics = _unclaimed([spec.name for spec in per_image_specs()], RECORD_COLUMNS + DIAGNOSTIC_COLUMNS)
    return [*RECORD_COLUMNS, *metrics, *DIAGNOSTIC_COLUMNS]


def summary_columns() -> list[str]:
    """summary.csv's columns for one model."""
    metrics = _unclaimed([col for spec in specs() for col in spec.summary_columns], SUMMARY_COLUMNS)
    return ["model", "images", *metrics, "zero_grad_images"]


def check_columns() -> None:
    """RegistryError now, before any work, if a registered metric would write over a column."""
    per_image_columns()
    summary_columns()


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


def summarize(per_image: pd.DataFrame, model: str, seed: int = 0) -> dict[str, Any]:
    """One summary row: each metric's summary (for a per-image metric: mean/std/n/95% CI, NaNs such
    as the PAC of a zero activation left out), then the images with a zero-gradient step."""
    row: dict[str, Any] = {"model": model, "images": len(per_image)}
    for spec in specs():
        row.update(summary_of(spec, per_image, seed))
    row["zero_grad_images"] = int(per_image["zero_grad"].astype(bool).sum()) if len(per_image) else 0
    return row


def summary_of(spec: MetricSpec, per_image: pd.DataFrame, seed: int) -> dict[str, Any]:
    """The summary.csv columns of one metric."""
    if spec.summary is not None:
        return {spec.name: spec.summary(per_image)}
    name = spec.name
    values = per_image[name].to_numpy(dtype=float) if len(per_image) else np.array([])
    values = values[np.isfinite(values)]
    low, high = bootstrap_ci(values, seed)
    return {f"{name}_mean": float(values.mean()) if len(values) else float("nan"),
            f"{name}_std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
            f"{name}_n": int(len(values)), f"{name}_ci_low": low, f"{name}_ci_high": high}


def error_row(model: str, error: str) -> dict[str, Any]:
    """The summary row of a model that failed to load or run: every metric NaN, and why."""
    row: dict[str, Any] = {key: float("nan") for key in summary_columns()}
    row.update(model=model, error=error)
    return row


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
