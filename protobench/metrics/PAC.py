"""PAC, the activation change in %: how far the attack lowered p*'s activation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protobench.core.metrics import MetricSpec, register

if TYPE_CHECKING:
    from torch import Tensor


def pac(before: Tensor, after: Tensor) -> Tensor:
    """Activation change in %: positive when the activation fell. NaN when it was 0 before. In float64,
    as the reference (`(1 - float(after) / float(before)) * 100`)."""
    return 100 * (1 - after.double() / before.double())


register(MetricSpec("PAC", "PAC (activation change, %)", "%", True, 1.0, order=20, csv_order=10,
                    per_image=lambda o: pac(o.act_star, o.act_star_adv)))
