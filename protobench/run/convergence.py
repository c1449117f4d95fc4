"""How the attack converged (docs/metrics.md, Attack strength): every run writes convergence.csv,
the mean objective, the mean PAC and the share of images still improving at each step.

During the attack, `Trace` keeps the objective of every image at every evaluation on the device
(no host read in the step loop, tests/test_sync.py); the per-image traces travel to the CPU with
the batch's other results, are kept in the partial log (so `--resume` and torchrun shards lose
nothing), and `table` averages them once the run is complete.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

TRACE_KEYS = ("trace_objective", "trace_pac")  # per-image lists in the records, not per_image.csv columns
CLEAN_KEY = "objective_clean"
RECORD_KEYS = (*TRACE_KEYS, CLEAN_KEY)  # what the attack adds to each record for convergence.csv
IMPROVING = 1e-3  # an image improves at a step when its best objective drops by more than this share of its clean one
COLUMNS = ["step", "images", "objective_mean", "PAC_mean", "improving_share"]


class Trace:
    """The attack's objective as seen through `objective`: per call, the (B,) values and p*'s activation."""

    def __init__(self, p_star):
        import torch

        self.rows, self.p_star = torch.arange(len(p_star), device=p_star.device), p_star  # (B,) each
        self.values: list = []
        self.act: list = []

    def record(self, value, act) -> None:
        """One evaluation: the (B,) objective and the (B, P) activations it came from."""
        self.values.append(value.detach())
        self.act.append(act.detach()[self.rows, self.p_star])

    def tensors(self, final_value, final_act, clean_value, act_star) -> dict[str, Any]:
        """(B, T + 1) objective and PAC at each evaluation and for the returned images (final_act: their (B, P)
        activations), (B,) the clean objective."""
        import torch

        values = torch.stack([*self.values, final_value.detach()], dim=1)
        act = torch.stack([*self.act, final_act.detach()[self.rows, self.p_star]], dim=1).clamp(min=0)
        pac = 100 * (1 - act / act_star[:, None])
        return {TRACE_KEYS[0]: values, TRACE_KEYS[1]: pac, CLEAN_KEY: clean_value.detach()}


def table(records: Sequence[dict[str, Any]]):
    """convergence.csv: one row per evaluation of the attack (step 0: the random start; the last row:
    the images the attack returned), averaged over images; None when the records hold no trace."""
    import numpy as np
    import pandas as pd

    kept = [r for r in records if isinstance(r.get(TRACE_KEYS[0]), list)]
    if not kept or len({len(r[TRACE_KEYS[0]]) for r in kept}) != 1:
        return None
    objective = np.array([r[TRACE_KEYS[0]] for r in kept], dtype=float)  # (N, T + 1)
    pac = np.array([r[TRACE_KEYS[1]] for r in kept], dtype=float)
    clean = np.array([r[CLEAN_KEY] for r in kept], dtype=float)
    return pd.DataFrame({"step": np.arange(objective.shape[1]), "images": len(kept),
                         "objective_mean": objective.mean(axis=0), "PAC_mean": _finite_means(pac),
                         "improving_share": improving(objective, clean).mean(axis=0)}, columns=COLUMNS)


def improving(objective, clean):
    """(N, T + 1) bool: the image's lowest objective so far dropped at this step by more than IMPROVING of
    its clean objective (step 0: the random start, compared with the clean image)."""
    import numpy as np

    best = np.minimum.accumulate(np.concatenate([clean[:, None], objective], axis=1), axis=1)
    return (best[:, :-1] - best[:, 1:]) > IMPROVING * np.abs(clean)[:, None]


def _finite_means(values):
    import numpy as np

    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    return np.where(counts > 0, np.where(finite, values, 0).sum(axis=0) / np.maximum(counts, 1), math.nan)


def write(out, records: Sequence[dict[str, Any]]) -> None:
    """convergence.csv beside per_image.csv, when the run attacked."""
    from protobench.run.results import write_csv

    frame = table(records)
    if frame is not None:
        write_csv(out / "convergence.csv", frame)
