"""PAC, PRC and PLC (SPEC 3.4) and prototype selection (SPEC 3.1), one value per image, batched."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protobench.core.regions import quantile


def select_prototypes(act: torch.Tensor, in_class: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Which prototypes to attack, and p* for the metrics.

    Args:
        act: (B, P) max activation of every prototype, clipped at 0.
        in_class: (B, P) True for the prototypes of each image's true class.
        mode: 'top-proto' (p* = the most active prototype of any class, attacked alone) or
            'gt-protos' (all true-class prototypes attacked; p* = the most active of them).
    Returns:
        attacked (B, P) bool, p_star (B,) long.
    """
    if mode == "top-proto":
        p_star = act.argmax(dim=1)
        attacked = F.one_hot(p_star, act.shape[1]).bool()
    elif mode == "gt-protos":
        if not in_class.any(dim=1).all():
            raise ValueError("gt-protos: some images' classes have no prototypes; use --select top-proto")
        p_star = act.masked_fill(~in_class, -torch.inf).argmax(dim=1)
        attacked = in_class
    else:
        raise ValueError(f"unknown selection {mode!r}: use 'top-proto' or 'gt-protos'")
    return attacked, p_star


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
