"""acc_after: top-1 accuracy in % on the attacked images."""

from protobench.core.metrics import MetricSpec, register
from protobench.metrics.acc_before import accuracy, correct

register(MetricSpec("acc_after", "accuracy, attacked images (%)", "%", False, 1.0, order=50, decimals=1,
                    summary=accuracy("pred_after"), tol_groups=("acc",), summary_rows=correct("pred_after")))
