"""Paired comparison of two runs on the images both evaluated (docs/ci.md, Paired deltas).

Both runs attacked the same images, so each image's change is a sample of the model's change: the
delta of a metric is its value on the new run minus its value on the baseline, over the shared
images, and its 95% interval is a paired bootstrap (docs/metrics.md, Uncertainty): each draw
resamples the shared images with replacement and recomputes the metric in both runs on that one
sample. Every draw comes from a generator seeded with PAIRED_SEED, so the interval is the same on
every machine and rerun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from protobench.core.metrics import MetricSpec

PAIRED_SEED = 0
N_BOOT = 1000  # as many draws as each run's own CI (protobench.run.results.bootstrap_ci)
LEVEL = 0.95
CHUNK = 200  # draws resampled at a time: a (CHUNK, images) count matrix, a few MB for CUB
MAX_TABLE_BYTES = 512 * 2**20  # CUB's per_image.csv is about 1 MB: a larger file is not read (no pairing)


@dataclass(frozen=True)
class Paired:
    """One metric on the shared images: its value in each run, their difference and the interval."""

    base: float
    new: float
    delta: float  # new - base
    ci_low: float  # paired bootstrap percentile interval of delta
    ci_high: float


def draws(n: int, n_boot: int = N_BOOT, seed: int = PAIRED_SEED) -> np.ndarray:
    """(n_boot, n) image positions: each row one resample of the n shared images with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def resampled_means(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(n_boot,) the mean of the finite values of each resample in `idx` (NaN where it drew none):
    each image weighted by how often the row drew it, counted CHUNK rows at a time."""
    finite = np.isfinite(values)
    clean = np.where(finite, values, 0.0)
    out = np.empty(len(idx))
    n = len(values)
    for start in range(0, len(idx), CHUNK):
        rows = idx[start:start + CHUNK]
        flat = (np.arange(len(rows))[:, None] * n + rows).ravel()
        counts = np.bincount(flat, minlength=len(rows) * n).reshape(len(rows), n).astype(float)
        kept = counts @ finite
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + len(rows)] = np.where(kept > 0, (counts @ clean) / kept, np.nan)
    return out


def percentile_interval(deltas: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` interval of the bootstrap deltas (the draws where both runs had a value)."""
    deltas = deltas[np.isfinite(deltas)]
    if len(deltas) == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    return float(np.quantile(deltas, alpha)), float(np.quantile(deltas, 1 - alpha))


def finite_mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def paired(spec: MetricSpec, base: pd.DataFrame, new: pd.DataFrame, idx: np.ndarray) -> Paired | None:
    """`spec` on two per-image tables whose rows are the same images in the same order; `idx`: draws(len).
    None when one of the tables lacks what the metric reads (a plugin metric one run did not have)."""
    if spec.per_image is not None and not (spec.name in base.columns and spec.name in new.columns):
        return None
    try:
        return _paired(spec, base, new, idx)
    except (KeyError, ValueError, TypeError):  # a run-level metric whose columns one run lacks
        return None


def _paired(spec: MetricSpec, base: pd.DataFrame, new: pd.DataFrame, idx: np.ndarray) -> Paired:
    if spec.summary is not None and spec.summary_rows is None:  # a run-level figure: summarise each resample
        b, n = float(spec.summary(base)), float(spec.summary(new))
        boot = np.array([float(spec.summary(new.iloc[i])) - float(spec.summary(base.iloc[i])) for i in idx])
    else:  # the mean of per-image values: resampled as counts, all draws at once
        bv, nv = (per_image_values(spec, t) for t in (base, new))
        b, n = (float(spec.summary(t)) for t in (base, new)) if spec.summary else (finite_mean(bv), finite_mean(nv))
        boot = resampled_means(nv, idx) - resampled_means(bv, idx)
    low, high = percentile_interval(boot)
    return Paired(b, n, n - b, low, high)


def per_image_values(spec: MetricSpec, frame: pd.DataFrame) -> np.ndarray:
    """The per-image values whose (finite) mean is the metric."""
    if spec.summary_rows is not None:
        return np.asarray(spec.summary_rows(frame), dtype=float)
    return pd.to_numeric(frame[spec.name], errors="coerce").to_numpy(dtype=float)


def read_per_image(folder: Path | None) -> pd.DataFrame | None:
    """A run's per_image.csv (None when there is none, or it lacks the index column)."""
    if folder is None or not (folder / "per_image.csv").is_file():
        return None
    if (folder / "per_image.csv").stat().st_size > MAX_TABLE_BYTES:
        return None
    try:
        frame = pd.read_csv(folder / "per_image.csv")
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    return frame if "index" in frame.columns and frame["index"].is_unique else None


def shared_images(base: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of the images both tables hold (matched by dataset index), in the same order."""
    common = sorted(set(base["index"].tolist()) & set(new["index"].tolist()))
    pick = (lambda t: t.set_index("index", drop=False).loc[common].reset_index(drop=True))
    return pick(base), pick(new)


def describe(images: int, base_total: int, new_total: int) -> str:
    """The note that says which images the deltas are over."""
    if images == base_total == new_total:
        return f"paired on the same {images} images: [low, high] is the paired bootstrap 95% interval of the delta"
    return (f"compared on the {images} images both runs evaluated (base {base_total}, new {new_total}): base, new "
            "and delta are over those images; [low, high] is the paired bootstrap 95% interval of the delta")


def row_values(result: Paired) -> dict[str, Any]:
    return {"base": result.base, "new": result.new, "delta": result.delta, "ci_low": result.ci_low,
            "ci_high": result.ci_high}


def run_notes(model: str, base: dict | None, new: dict | None, shared, tables, gate: str) -> list[str]:
    """What the reader needs to know about how two runs were compared."""
    notes = []
    seeds = [(m or {}).get("protocol", {}).get("seed") if isinstance((m or {}).get("protocol"), dict) else None
             for m in (base, new)]
    if seeds[0] != seeds[1]:
        notes.append(f"{model}: the attacks used different seeds (base {seeds[0]}, new {seeds[1]}): the deltas "
                     "include the attack's own randomness")
    if shared is not None:
        notes.append(f"{model}: {describe(len(shared[0]), len(tables[0]), len(tables[1]))}")
    elif gate == "significant":
        notes.append(f"{model}: no per-image results of the same images in both runs, so no paired interval: "
                     "gated by the tolerance alone")
    return notes
