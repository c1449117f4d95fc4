"""`--region tokens`, the copy of the benchmark in a later paper (docs/metrics.md): the boxes of the
tokens (map cells) each attacked prototype's parts matched, no margin."""

from __future__ import annotations

import torch

from protobench.core.regions import REGIONS, Region, cell_boxes, outside_boxes


def token_region(maps: torch.Tensor, cells: torch.Tensor, valid: torch.Tensor, *, size: int, margin: int
                 ) -> torch.Tensor:
    """`--region tokens`: the boxes of the cells each attacked prototype's parts matched.

    That benchmark copy zeroes mask[16 r : 16 (r + 1) - 1] for token (r, c): its end is
    exclusive already, so the token's last pixel row and column stay attackable (15 x 15 boxes
    at 16 px per token). Reproduced: each cell box loses its last row and column."""
    y0, y1, x0, x1 = cell_boxes(cells, tuple(maps.shape[-2:]), size)
    return outside_boxes(y0, y1 - 1, x0, x1 - 1, valid, size, margin)


REGIONS.add("tokens", Region(token_region, lambda size: 0, "the boxes of the tokens (map cells) the "
                                                           "prototype's parts matched, no margin"))
