"""acc_before: top-1 accuracy in % on the clean images."""

from __future__ import annotations

from typing import Any

from protobench.core.metrics import MetricSpec, Summary, register


def accuracy(column: str) -> Summary:
    """Top-1 accuracy in % of the predictions in `column` against `label` (0 for no images)."""
    def summarize(frame: Any) -> float:
        return 100.0 * float((frame[column] == frame["label"]).sum()) / max(len(frame), 1)

    return summarize


def correct(column: str, minus: str | None = None) -> Summary:
    """Per image: 100 if the prediction in `column` is right, else 0 (their mean is accuracy(column)),
    less the same for `minus` (pred_before less pred_after: AC's per-image values)."""
    def hit(frame: Any, name: str | None) -> Any:
        return (frame[name] == frame["label"]).to_numpy(dtype=float) if name else 0.0

    return lambda frame: 100.0 * (hit(frame, column) - hit(frame, minus))


register(MetricSpec("acc_before", "accuracy, clean images (%)", "%", False, 1.0, order=40, decimals=1,
                    summary=accuracy("pred_before"), tol_groups=("acc",), summary_rows=correct("pred_before")))
