"""PRC, the rank change: how many more other-class prototypes beat p* after the attack."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protobench.core.metrics import MetricSpec, register

if TYPE_CHECKING:
    from torch import Tensor


def prc(act_before: Tensor, act_after: Tensor, p_star: Tensor, in_class: Tensor) -> Tensor:
    """Rank change: how many more other-class prototypes beat p* after the attack than before."""
    def outranking(act: Tensor) -> Tensor:
        own = act.gather(1, p_star[:, None])
        return ((act > own) & ~in_class).sum(dim=1)

    return outranking(act_after) - outranking(act_before)


register(MetricSpec("PRC", "PRC (rank change)", "prototypes", True, 0.5, order=30, csv_order=20,
                    per_image=lambda o: prc(o.act, o.act_adv, o.p_star, o.in_class)))
