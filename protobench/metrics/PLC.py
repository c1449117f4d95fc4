"""PLC, the location change in %: how far p*'s high-activation region moved, on the pixels (the
paper's) or on the model's tokens (`--plc tokens`, ProtoViT's copy of the benchmark)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protobench.core.metrics import MetricSpec, Outcome, PerImage, register
from protobench.core.protocol import PLC_KINDS

if TYPE_CHECKING:
    from torch import Tensor


def high_region(maps: Tensor, size: int, q: float = 0.9) -> Tensor:
    """(B, h, w) -> (B, S, S) bool: bilinear upsampling strictly above its q-quantile."""
    import torch.nn.functional as F  # here: importing this module must not import torch

    from protobench.core.regions import quantile

    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return up > quantile(up.flatten(1), q)[:, None, None]


def plc(map_before: Tensor, map_after: Tensor, size: int, q: float = 0.9) -> Tensor:
    """Location change in %: 100 (1 - IoU) of the high regions before and after; 0 if both are empty."""
    a, b = high_region(map_before, size, q), high_region(map_after, size, q)
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    iou = (inter / union.clamp(min=1)).double()  # a float32 ratio, then 100 (1 - iou) in float64: the reference's
    return (100 * (1 - iou)).where(union > 0, 0.0)


def plc_tokens(*args: Any, **kwargs: Any) -> Tensor:
    """The token-level PLC: protobench.core.regions.plc_tokens, beside the token region (imported
    when used, so that reading the metric table never imports torch)."""
    from protobench.core.regions import plc_tokens as formula

    return formula(*args, **kwargs)


BY_KIND: dict[str, PerImage] = {  # --plc NAME, one per protobench.core.protocol.PLC_KINDS
    "pixels": lambda o: plc(o.map_star, o.map_star_adv, o.size, o.plc_q),
    "tokens": lambda o: plc_tokens(o.parts_star, o.parts_star_adv, o.cells_star, o.cells_star_adv),
}
if tuple(BY_KIND) != PLC_KINDS:
    raise RuntimeError(f"--plc kinds {PLC_KINDS} and their formulas {tuple(BY_KIND)} disagree")


def per_image(o: Outcome) -> Tensor:
    return BY_KIND[o.plc](o)


register(MetricSpec("PLC", "PLC (location change, %)", "%", True, 1.0, order=10, csv_order=30, per_image=per_image))
