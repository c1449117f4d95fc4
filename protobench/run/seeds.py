"""Several attack seeds in one run (`--seeds 0,1,2`, docs/metrics.md, Uncertainty): each image is
attacked once per seed from the same clean pass; per_image.csv holds each image's mean over the seeds,
and summary.csv a 95% interval that covers both the sample of images and the attack's random start.

The interval is a two-level bootstrap: each draw resamples the images with replacement and then, for
each drawn image, its seeds with replacement, and averages; the interval is the 2.5th to 97.5th
percentile of the draws. The per-seed values travel in the partial log (`seeds_<metric>` lists), never
in per_image.csv.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

PREFIX = "seeds_"
CORRECT_AFTER = "correct_after"  # per seed: 1 when the prediction on the attacked image is right
CHUNK = 100  # bootstrap draws at a time


def matrices(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """(images, seeds) per-seed values of each metric the records hold ({} for a one-seed run)."""
    if not records:
        return {}
    names = [key[len(PREFIX):] for key, value in records[0].items()
             if key.startswith(PREFIX) and isinstance(value, list)]
    return {name: np.array([r[PREFIX + name] for r in records], dtype=float) for name in names}


def two_level_means(values: np.ndarray, images: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """(draws,) mean of each draw: images (draws, N) image rows, seeds (draws, N, S) seed columns per drawn image."""
    picked = values[images[..., None], seeds]  # (draws, N, S)
    return np.nanmean(picked.reshape(len(picked), -1), axis=1)


def two_level_ci(values: np.ndarray, seed: int, n_boot: int = 1000, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean over images and seeds (images whose every seed is NaN left out)."""
    values = values[~np.isnan(values).all(axis=1)]
    if len(values) == 0:
        return math.nan, math.nan
    n, s = values.shape
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, n_boot, CHUNK):
        count = min(CHUNK, n_boot - start)
        means.append(two_level_means(values, rng.integers(0, n, (count, n)), rng.integers(0, s, (count, n, s))))
    alpha = (1 - level) / 2
    joined = np.concatenate(means)
    return float(np.quantile(joined, alpha)), float(np.quantile(joined, 1 - alpha))


def summarize(per_image: Any, records: Sequence[dict[str, Any]], model: str, seed: int, suites: Sequence[str],
              per_prototype: Any = None) -> dict[str, Any]:
    """protobench.run.results.summarize, then summary_update with the records' per-seed values."""
    from protobench.run.results import summarize as one_seed

    row = one_seed(per_image, model, seed, suites, per_prototype)
    return summary_update(row, matrices(records), seed)


def summary_update(row: dict[str, Any], per_seed: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """A summary row of a several-seed run: each per-image metric's interval from both levels, accuracy
    on attacked images averaged over the seeds, and the seed count."""
    if not per_seed:
        return row
    for name, values in per_seed.items():
        if f"{name}_ci_low" in row:
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = two_level_ci(values, seed)
    if CORRECT_AFTER in per_seed and "acc_after" in row:
        row["acc_after"] = 100.0 * float(per_seed[CORRECT_AFTER].mean())
        row["AC"] = row["acc_before"] - row["acc_after"]
    row["seeds"] = next(iter(per_seed.values())).shape[1]
    return row
