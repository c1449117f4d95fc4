"""What the attack targets: which prototypes (docs/metrics.md, The procedure, step 2) and which
pixels it may change, those outside the protected region (step 3). Batched.

The protected region is a registered `Region` (REGIONS, `--region NAME`); the built-ins are the
modules of `protobench/regions/`, one per region, named after it:

- `box` (the paper's): for each attacked prototype, upsample its similarity map to S x S
  (bicubic), take the bounding box of pixels >= the 95th percentile (numpy.percentile's float64
  threshold, as the reference computes it), grow it by `margin` px,
  clamp the end to S - 1 (exclusive, as the reference does).
- `tokens` (a later paper's copy of the benchmark, docs/metrics.md): for each attacked
  prototype, the pixel box of every map cell (token) one of its parts matched, without its last
  row and column (that copy's off-by-one), grown by `margin` px (none by default).

Several prototypes per image -> union of their boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from protobench.registry import Registry


QUANTILE_CHUNK = 2**24  # elements per torch.quantile call: older torch refuses larger inputs


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile (0 <= q <= 1) over the last dim: torch.quantile(values, q, dim=-1), linear
    interpolation, which is the reference's own call for PLC (one map at a time; a batch of rows
    gives the same bits). Called on chunks of rows so that no call exceeds older torch's size limit.

    torch takes the rank from q in double precision and interpolates in the values' dtype, so its
    float32 threshold can differ by one float32 step from a lerp with weight q (n - 1) - floor(...)
    computed otherwise; ties at the threshold then fall on the other side of `>`.
    """
    rows = max(1, QUANTILE_CHUNK // max(1, values.shape[-1]))
    flat = values.reshape(-1, values.shape[-1])
    out = [torch.quantile(part, q, dim=-1) for part in flat.split(rows)]
    return torch.cat(out).view(values.shape[:-1]) if out else flat.new_empty(values.shape[:-1])


def percentile_threshold(values: torch.Tensor, q: float) -> torch.Tensor:
    """float64 (...) threshold of `values` (..., n) as numpy.percentile(values, 100 q) computes it in
    numpy 1.22 (the reference environment's version), for the box's `>=`: the lower and upper
    neighbours a, b at rank q (n - 1) (float64), then a + (b - a) t for t < 0.5, else b - (b - a)(1 - t),
    with b - a in the values' dtype and the rest in float64. Newer numpy rounds the result to
    float32, which can put a tie at `a` inside the region."""
    n = values.shape[-1]
    rank = (100 * q / 100) * (n - 1)  # np.percentile divides the percentile by 100
    lo = int(rank)
    hi = min(lo + 1, n - 1)
    t = rank - lo
    a = values.kthvalue(lo + 1, dim=-1).values
    b = a if hi == lo else values.kthvalue(hi + 1, dim=-1).values
    diff = (b - a).double()
    return b.double() - diff * (1 - t) if t >= 0.5 else a.double() + diff * t


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
    thr = percentile_threshold(up.flatten(-2), q)[..., None, None]  # float64, as the reference's numpy
    hot = up.double() >= thr
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
    y0, y1, x0, x1 = high_activation_boxes(maps, size, q)[..., None, :].unbind(-1)  # (B, K, 1) each
    return outside_boxes(y0, y1, x0, x1, valid, size, margin)


def outside_boxes(y0: torch.Tensor, y1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, valid: torch.Tensor,
                  size: int, margin: int) -> torch.Tensor:
    """Mask (B, 1, S, S), True outside every box: boxes (B, K, J) with exclusive ends, each grown
    by `margin` px and its end clamped to S - 1 (the reference's), of the K prototypes `valid` marks."""
    y0, x0 = (y0 - margin).clamp(min=0), (x0 - margin).clamp(min=0)
    y1, x1 = (y1 + margin).clamp(max=size - 1), (x1 + margin).clamp(max=size - 1)
    ar = torch.arange(size, device=valid.device)
    rows = (ar >= y0[..., None]) & (ar < y1[..., None])  # (B, K, J, S)
    cols = (ar >= x0[..., None]) & (ar < x1[..., None])
    inside = rows[..., :, None] & cols[..., None, :] & valid[..., None, None, None]  # (B, K, J, S, S)
    return ~inside.flatten(1, 2).any(dim=1, keepdim=True)


def cell_boxes(cells: torch.Tensor, grid: tuple[int, int], size: int) -> tuple[torch.Tensor, ...]:
    """Pixel bounds (y0, y1, x0, x1), ends exclusive, of map cells (row-major index on an
    h x w grid) in an S x S image: cell (r, c) covers rows [r S / h, (r + 1) S / h), rounded down."""
    h, w = grid
    r, c = cells // w, cells % w
    return r * size // h, (r + 1) * size // h, c * size // w, (c + 1) * size // w


@dataclass(frozen=True)
class Region:
    """A way to protect the attacked prototypes' region (`--region NAME`).

    `attackable(maps, cells, valid, size=S, margin=m)` gets the attacked prototypes' maps
    (B, K, h, w, clipped at 0), the cells their parts matched (B, K, J; see
    protobench.models.adapter.Evidence) and which of the K slots hold one (B, K); it returns
    the mask (B, 1, S, S), True where the attack may change pixels. `margin(S)` is the
    default margin for images of side S (`--margin` overrides it)."""

    attackable: Callable[..., torch.Tensor]
    margin: Callable[[int], int]
    summary: str  # one line, for the docs and --help


REGIONS: Registry[Region] = Registry("region", group="protobench.regions", check=lambda obj: isinstance(obj, Region),
                                     expects="a protobench.core.regions.Region", package="protobench.regions")
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
    elif mode == "gt-protos":  # every class has prototypes: evaluate checks the model before the first batch
        p_star = act.masked_fill(~in_class, -torch.inf).argmax(dim=1)
        attacked = in_class
    else:
        raise ValueError(f"unknown selection {mode!r}: use 'top-proto' or 'gt-protos'")
    return attacked, p_star


def plc_tokens(parts_before: torch.Tensor, parts_after: torch.Tensor, cells_before: torch.Tensor,
               cells_after: torch.Tensor, q: float = 0.9) -> torch.Tensor:
    """The token-level location change in %, on the model's own grid (docs/metrics.md, `--plc tokens`).

    Per part j, the cells at or above the q-quantile of its map (B, J, h, w), no upsampling;
    100 (1 - IoU) of those sets before and after, over all parts together. 0 when every cell
    the parts matched before is still among the cells they match after (a set comparison)."""

    def high(parts: torch.Tensor) -> torch.Tensor:
        flat = parts.flatten(2).float()
        return flat >= quantile(flat, q)[..., None]

    a, b = high(parts_before), high(parts_after)
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    moved = (cells_before[:, :, None] != cells_after[:, None, :]).all(dim=2).any(dim=1)
    return (100 * (1 - inter / union.clamp(min=1))).where(moved & (union > 0), 0.0)
