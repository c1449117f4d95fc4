"""Per-image diagnostics beside the metrics (docs/metrics.md, Reading PLC: collapse and protection).

PLC compares the top-10% regions of p*'s map before and after the attack. Two things make a high
PLC mean something other than "the explanation moved":

- `collapsed`: the attack flattened the map. Its peak then hardly stands above the rest, so its
  top-10% region is decided by small differences and can lie anywhere.
- `top_outside`: the protected box comes from the top 5% of the (bicubic) map plus a margin,
  PLC compares the top 10% of the (bilinear) map; part of that region can lie outside the box, and
  those pixels were attacked.

Both are pure tensor functions of one batch, with no host synchronisation (tests/test_sync.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

COLLAPSE_FRACTION = 1 / 3  # collapsed: the attacked map's peak contrast below this share of the clean map's
COLUMNS = ("collapsed", "top_outside")  # per_image.csv, after protected_frac


def contrast(maps: Tensor) -> Tensor:
    """(B, h, w) -> (B,): how far each map's peak stands above its median cell (maps clipped at 0)."""
    flat = maps.flatten(1)
    return flat.amax(dim=1) - flat.median(dim=1).values


def collapsed(map_before: Tensor, map_after: Tensor, fraction: float = COLLAPSE_FRACTION) -> Tensor:
    """(B,) bool: the attacked map's contrast (peak minus median) is below `fraction` of the clean
    map's. False when the clean map is flat itself (contrast 0): nothing could collapse."""
    before, after = contrast(map_before), contrast(map_after)
    return (after < fraction * before) & (before > 0)


def top_outside(map_before: Tensor, attackable: Tensor, size: int, q: float = 0.9) -> Tensor:
    """(B,) %: the share of the clean map's top-10% region (the pixels PLC compares) that the attack
    could change, i.e. outside the protected region; 0 when that region is empty (a constant map).
    attackable: (B, 1, S, S) bool."""
    from protobench.metrics.PLC import high_region

    region = high_region(map_before, size, q).flatten(1)
    outside = (region & attackable[:, 0].flatten(1)).sum(dim=1).float()
    return 100 * outside / region.sum(dim=1).clamp(min=1).float()
