"""AC, the accuracy change: accuracy points lost to the attack. Derived from the two accuracies:
compare reports it and gates only them, so one accuracy drop is one failure."""

from __future__ import annotations

from typing import Any

from protobench.core.metrics import MetricSpec, register
from protobench.metrics.acc_before import accuracy, correct


def accuracy_change(frame: Any) -> float:
    """AC: accuracy points lost to the attack."""
    return accuracy("pred_before")(frame) - accuracy("pred_after")(frame)


register(MetricSpec("AC", "AC (accuracy change, points)", "points", True, 1.0, order=60, decimals=1,
                    summary=accuracy_change, derived_from=("acc_before", "acc_after"),
                    summary_rows=correct("pred_before", "pred_after")))
