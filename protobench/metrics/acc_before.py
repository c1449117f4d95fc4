"""acc_before: top-1 accuracy in % on the clean images."""

from __future__ import annotations

from typing import Any

from protobench.core.metrics import MetricSpec, Summary, register


def accuracy(column: str) -> Summary:
    """Top-1 accuracy in % of the predictions in `column` against `label` (0 for no images)."""
    def summarize(frame: Any) -> float:
        return 100.0 * float((frame[column] == frame["label"]).sum()) / max(len(frame), 1)

    return summarize


register(MetricSpec("acc_before", "accuracy, clean images (%)", "%", False, 1.0, order=40, decimals=1,
                    summary=accuracy("pred_before"), tol_groups=("acc",)))
