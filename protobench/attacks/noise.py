"""`--attack noise`: PGD's random start alone, which is what the reference implementation
effectively computes (docs/metrics.md, Why the reference code's "PGD" is noise)."""

from __future__ import annotations

import torch

from protobench.attacks.pgd import pgd
from protobench.core.attack import ATTACKS, Bounds, Objective


@ATTACKS.register("noise")
def noise_only(objective: Objective, x: torch.Tensor, attackable: torch.Tensor, noise: torch.Tensor, *,
               eps: float, step: float, steps: int, bounds: Bounds = None) -> tuple[torch.Tensor, torch.Tensor]:
    """pgd's random start alone: uniform noise in [-eps, eps] on the attackable pixels (no steps)."""
    return pgd(objective, x, attackable, noise, eps=eps, step=step, steps=0, bounds=bounds)
