"""`--region box`, the paper's: for each attacked prototype, the bounding box of its upsampled map's
top 5%, grown by a margin (10 px at 224 px)."""

from __future__ import annotations

import torch

from protobench.core.regions import REGIONS, Region, attackable_pixels


def box_region(maps: torch.Tensor, cells: torch.Tensor, valid: torch.Tensor, *, size: int, margin: int,
               q: float = 0.95) -> torch.Tensor:
    """`--region box`: the paper's high-activation box of each attacked prototype's map (its top 5%: q)."""
    return attackable_pixels(maps, valid, size, margin, q)


def default_margin(size: int) -> int:
    """10 px at 224 px (the reference), scaled with the image side for other sizes."""
    return max(1, round(10 * size / 224))


REGIONS.add("box", Region(box_region, default_margin, "the paper's: the box of the upsampled map's top 5%, "
                                                      "plus a margin (10 px at 224 px)"))
