"""What the attack targets: which prototypes (docs/metrics.md, The procedure, step 2) and which
pixels it may change, those outside the protected region (step 3). Batched.

For each attacked prototype: upsample its similarity map to S x S (bicubic), take the
bounding box of pixels >= the 95th percentile, grow it by `margin` px, clamp the end
to S - 1 (exclusive, as the reference does). Several prototypes per image -> union of boxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation q-quantile (0 <= q <= 1) over the last dim, as torch.quantile and
    numpy.percentile(values, 100 q).

    Unlike torch.quantile it has no input-size limit (two kthvalue calls instead of a sort).
    """
    n = values.shape[-1]
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    v_lo = values.kthvalue(lo + 1, dim=-1).values
    v_hi = v_lo if hi == lo else values.kthvalue(hi + 1, dim=-1).values
    return torch.lerp(v_lo, v_hi, pos - lo)


def _first_last(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first and one past the last True along the last dim; (0, 1) when none, as the reference."""
    n = hit.shape[-1]
    ar = torch.arange(n, device=hit.device)
    first = torch.where(hit, ar, n).amin(-1)
    last = torch.where(hit, ar, -1).amax(-1)
    none = last < 0
    return first.masked_fill(none, 0), (last + 1).masked_fill(none, 1)


def high_activation_boxes(maps: torch.Tensor, size: int, q: float = 0.95) -> torch.Tensor:
    """Bounding boxes (..., 4) = (y0, y1, x0, x1), ends exclusive, of
    each map (..., h, w) at or above its q-quantile after bicubic upsampling to size x size."""
    lead = maps.shape[:-2]
    up = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=(size, size),
                       mode="bicubic", align_corners=False).view(*lead, size, size)
    thr = quantile(up.flatten(-2), q)[..., None, None]
    hot = up >= thr
    y0, y1 = _first_last(hot.any(-1))
    x0, x1 = _first_last(hot.any(-2))
    return torch.stack([y0, y1, x0, x1], dim=-1)


def attackable_pixels(maps: torch.Tensor, valid: torch.Tensor, size: int, margin: int, q: float = 0.95
                      ) -> torch.Tensor:
    """Mask (B, 1, S, S), True where the attack may change pixels (outside every protected box).

    Args:
        maps: (B, K, h, w) maps of the attacked prototypes, clipped at 0.
        valid: (B, K) which of the K slots hold an attacked prototype (the rest is padding).
        size: image side S.
        margin: pixels added to each side of every box.
    """
    boxes = high_activation_boxes(maps, size, q)  # (B, K, 4)
    y0 = (boxes[..., 0] - margin).clamp(min=0)
    y1 = (boxes[..., 1] + margin).clamp(max=size - 1)  # the reference's exclusive end at S - 1
    x0 = (boxes[..., 2] - margin).clamp(min=0)
    x1 = (boxes[..., 3] + margin).clamp(max=size - 1)
    ar = torch.arange(size, device=maps.device)
    rows = (ar >= y0[..., None]) & (ar < y1[..., None])  # (B, K, S)
    cols = (ar >= x0[..., None]) & (ar < x1[..., None])
    inside = rows[..., :, None] & cols[..., None, :] & valid[..., None, None]  # (B, K, S, S)
    return ~inside.any(dim=1, keepdim=True)


def default_margin(size: int) -> int:
    """10 px at 224 px (the reference), scaled with the image side for other sizes."""
    return max(1, round(10 * size / 224))


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
