"""Records -> tables: per-image rows, one summary row per model, and atomic file writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from protobench.files import atomic_write_text

METRICS = ("PLC", "PAC", "PRC")
PER_IMAGE_COLUMNS = ["index", "path", "label", "pred_before", "pred_after", "proto", "proto_class",
                     "act_before", "act_after", "PAC", "PRC", "PLC", "zero_grad", "zero_grad_steps", "protected_frac"]


def bootstrap_ci(values: np.ndarray, seed: int, n_boot: int = 1000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so reruns agree)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(per_image: pd.DataFrame, model: str, seed: int = 0) -> dict[str, Any]:
    """One summary row: mean/std/n/95% CI per metric (NaNs, e.g. PAC of a zero activation, left out)."""
    row: dict[str, Any] = {"model": model, "images": len(per_image)}
    for name in METRICS:
        values = per_image[name].to_numpy(dtype=float) if len(per_image) else np.array([])
        values = values[np.isfinite(values)]
        row[f"{name}_mean"] = float(values.mean()) if len(values) else float("nan")
        row[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        row[f"{name}_n"] = int(len(values))
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = bootstrap_ci(values, seed)
    n = max(len(per_image), 1)
    row["acc_before"] = 100.0 * float((per_image["pred_before"] == per_image["label"]).sum()) / n
    row["acc_after"] = 100.0 * float((per_image["pred_after"] == per_image["label"]).sum()) / n
    row["AC"] = row["acc_before"] - row["acc_after"]
    row["zero_grad_images"] = int(per_image["zero_grad"].astype(bool).sum()) if len(per_image) else 0
    return row


def error_row(model: str, error: str) -> dict[str, Any]:
    """The summary row of a model that failed to load or run: every metric NaN, and why."""
    row: dict[str, Any] = {key: float("nan") for key in summarize(pd.DataFrame(columns=PER_IMAGE_COLUMNS), model)}
    row.update(model=model, error=error)
    return row


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
