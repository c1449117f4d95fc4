"""PAC, PRC and PLC (SPEC 3.4), one value per image, batched (prototype selection: core/regions.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protobench.core.regions import quantile


def pac(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Activation change in %: positive when the activation fell. NaN when it was 0 before."""
    return 100 * (1 - after / before)


def prc(act_before: torch.Tensor, act_after: torch.Tensor, p_star: torch.Tensor, in_class: torch.Tensor) -> torch.Tensor:
    """Rank change: how many more other-class prototypes beat p* after the attack than before."""
    def outranking(act: torch.Tensor) -> torch.Tensor:
        own = act.gather(1, p_star[:, None])
        return ((act > own) & ~in_class).sum(dim=1)

    return outranking(act_after) - outranking(act_before)


def high_region(maps: torch.Tensor, size: int, q: float = 0.9) -> torch.Tensor:
    """(B, h, w) -> (B, S, S) bool: bilinear upsampling strictly above its q-quantile."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return up > quantile(up.flatten(1), q)[:, None, None]


def plc(map_before: torch.Tensor, map_after: torch.Tensor, size: int, q: float = 0.9) -> torch.Tensor:
    """Location change in %: 100 (1 - IoU) of the high regions before and after; 0 if both are empty."""
    a, b = high_region(map_before, size, q), high_region(map_after, size, q)
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, 100 * (1 - inter / union.clamp(min=1)), torch.zeros_like(union))
