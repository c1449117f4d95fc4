"""The metrics (docs/metrics.md, The metrics): one spec per metric, in one registry.

Everything that computes, writes or shows a metric reads METRICS: the benchmark loop's measure
step (per-image values), per_image.csv and summary.csv, `protobench compare` (direction,
tolerance, --tol names), the CLI's tables and finetune's before/after table. A new metric is
one MetricSpec, registered with `register(spec)` or through the entry-point group
"protobench.metrics" (docs/metrics.md, Adding a metric).

This module imports no torch (compare and the CLI read the table without it); the
per-image functions get tensors and use their methods.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

from protobench.registry import Registry, RegistryError

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True, eq=False)
class Outcome:
    """What the attack did to one batch: the input of every per-image metric function.

    Tensors are on the run's device; B images, P prototypes, C classes, maps h x w, images S x S,
    J parts per prototype (1 unless the family's prototypes have parts, see
    protobench.models.adapter.Evidence).
    """

    images: Tensor  # (B, 3, S, S) the clean images, normalized
    images_adv: Tensor  # (B, 3, S, S) the attacked images
    attackable: Tensor  # (B, 1, S, S) bool: where the attack was allowed to change pixels
    maps: Tensor  # (B, P, h, w) similarity maps of the clean images, clipped at 0
    maps_adv: Tensor  # (B, P, h, w) those of the attacked images, clipped at 0
    logits: Tensor  # (B, C) on the clean images
    logits_adv: Tensor  # (B, C) on the attacked images
    labels: Tensor  # (B,) true classes
    p_star: Tensor  # (B,) long: the prototype the metrics follow (docs/metrics.md, procedure step 2)
    attacked: Tensor  # (B, P) bool: the prototypes the attack lowered
    in_class: Tensor  # (B, P) bool: the prototypes of each image's true class
    identity: Tensor  # (P, C) the model's prototype-class identity (> 0: the prototype's class)
    size: int  # S, the image side in pixels
    act: Tensor  # (B, P) every prototype's activation on the clean images, clipped at 0 (the max of its map
    #              unless the family says otherwise)
    act_adv: Tensor  # (B, P) the same on the attacked images
    parts: Tensor  # (B, P, J, h, w) each prototype's part maps on the clean images, as the model gives them
    parts_adv: Tensor  # (B, P, J, h, w) the same on the attacked images
    cells: Tensor  # (B, P, J) long: the map cell (row * w + col) each part matched on the clean images
    cells_adv: Tensor  # (B, P, J) the same on the attacked images
    plc: str = "pixels"  # the protocol's PLC definition (PLC_KINDS)

    @cached_property
    def _rows(self) -> Tensor:
        import torch

        return torch.arange(len(self.p_star), device=self.p_star.device)

    @property
    def act_star(self) -> Tensor:
        """(B,) a_p*(x): p*'s activation on the clean image."""
        return self.act[self._rows, self.p_star]

    @property
    def act_star_adv(self) -> Tensor:
        """(B,) a_p*(x'): the same on the attacked image."""
        return self.act_adv[self._rows, self.p_star]

    @property
    def map_star(self) -> Tensor:
        """(B, h, w) p*'s map on the clean image."""
        return self.maps[self._rows, self.p_star]

    @property
    def map_star_adv(self) -> Tensor:
        """(B, h, w) p*'s map on the attacked image."""
        return self.maps_adv[self._rows, self.p_star]

    @property
    def parts_star(self) -> Tensor:
        """(B, J, h, w) p*'s part maps on the clean image."""
        return self.parts[self._rows, self.p_star]

    @property
    def parts_star_adv(self) -> Tensor:
        return self.parts_adv[self._rows, self.p_star]

    @property
    def cells_star(self) -> Tensor:
        """(B, J) the cells p*'s parts matched on the clean image."""
        return self.cells[self._rows, self.p_star]

    @property
    def cells_star_adv(self) -> Tensor:
        return self.cells_adv[self._rows, self.p_star]


PerImage = Callable[[Outcome], "Tensor"]  # -> (B,) one value per image
Summary = Callable[[Any], float]  # the per_image.csv table (a pandas DataFrame) -> one number
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: how it is computed, written, summarised, shown and compared."""

    name: str  # per_image.csv column, summary.csv column (prefix), --tol name
    label: str  # in the CLI's tables and finetune's before/after table
    unit: str  # of its values and of its compare tolerance
    higher_is_worse: bool  # direction: compare fails a move this way larger than the tolerance
    tolerance: float  # compare's default tolerance, absolute, in `unit`
    per_image: PerImage | None = None  # one value per image: a per_image.csv column
    summary: Summary | None = None  # None: mean, std, n and 95% CI of the per-image column
    order: int = 100  # position in summary.csv and every table (built-ins 10-60)
    csv_order: int | None = None  # position among per_image.csv's metric columns [order]
    decimals: int = 2  # shown with this many decimals in the CLI's summary and models tables
    tol_groups: tuple[str, ...] = ()  # other --tol names that set this one too ('acc': both accuracies)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise RegistryError(f"metric name {self.name!r} must be a word of letters, digits and _ "
                                "(it becomes a CSV column)")
        if self.per_image is None and self.summary is None:
            raise RegistryError(f"metric {self.name!r} needs a per_image function, a summary function, or both")
        if not (isinstance(self.tolerance, (int, float)) and math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise RegistryError(f"metric {self.name!r}: tolerance must be a finite number >= 0")

    @property
    def column(self) -> str:
        """The summary.csv column compare and the tables read: the mean, or the one summary value."""
        return f"{self.name}_mean" if self.summary is None else self.name

    @property
    def summary_columns(self) -> list[str]:
        if self.summary is not None:
            return [self.name]
        return [f"{self.name}_{part}" for part in ("mean", "std", "n", "ci_low", "ci_high")]


METRICS: Registry[MetricSpec] = Registry("metric", group="protobench.metrics",
                                         check=lambda obj: isinstance(obj, MetricSpec),
                                         expects="a protobench.core.metrics.MetricSpec")


def register(spec: MetricSpec, *, replace: bool = False, source: str = "registered at run time") -> MetricSpec:
    """Add `spec` to METRICS under its own name (a taken name needs replace=True)."""
    METRICS.add(spec.name, spec, replace=replace, source=source)
    return spec


def specs() -> list[MetricSpec]:
    """Every registered metric (plugins included), in table order."""
    found = []
    for name, spec in METRICS.items():
        if spec.name != name:
            raise RegistryError(f"metric {name!r} is registered with a spec named {spec.name!r}: use one name")
        found.append(spec)
    return sorted(found, key=lambda s: (s.order, s.name))


def per_image_specs() -> list[MetricSpec]:
    """The metrics with a per-image column, in per_image.csv's order."""
    chosen = [s for s in specs() if s.per_image is not None]
    return sorted(chosen, key=lambda s: (s.order if s.csv_order is None else s.csv_order, s.name))


# --- the built-in metrics' functions ----------------------------------------------------------

def pac(before: Tensor, after: Tensor) -> Tensor:
    """Activation change in %: positive when the activation fell. NaN when it was 0 before."""
    return 100 * (1 - after / before)


def prc(act_before: Tensor, act_after: Tensor, p_star: Tensor, in_class: Tensor) -> Tensor:
    """Rank change: how many more other-class prototypes beat p* after the attack than before."""
    def outranking(act: Tensor) -> Tensor:
        own = act.gather(1, p_star[:, None])
        return ((act > own) & ~in_class).sum(dim=1)

    return outranking(act_after) - outranking(act_before)


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
    return (100 * (1 - inter / union.clamp(min=1))).where(union > 0, 0.0)


def plc_tokens(parts_before: Tensor, parts_after: Tensor, cells_before: Tensor, cells_after: Tensor,
               q: float = 0.9) -> Tensor:
    """The token-level location change in %, on the model's own grid (docs/metrics.md, `--plc tokens`).

    Per part j, the cells at or above the q-quantile of its map (B, J, h, w), no upsampling;
    100 (1 - IoU) of those sets before and after, over all parts together. 0 when every cell
    the parts matched before is still among the cells they match after (a set comparison)."""
    from protobench.core.regions import quantile

    def high(parts: Tensor) -> Tensor:
        flat = parts.flatten(2).float()
        return flat >= quantile(flat, q)[..., None]

    a, b = high(parts_before), high(parts_after)
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    moved = (cells_before[:, :, None] != cells_after[:, None, :]).all(dim=2).any(dim=1)
    return (100 * (1 - inter / union.clamp(min=1))).where(moved & (union > 0), 0.0)


PLC_KINDS: dict[str, PerImage] = {  # --plc NAME (protobench.core.protocol.PLC_KINDS)
    "pixels": lambda o: plc(o.map_star, o.map_star_adv, o.size),
    "tokens": lambda o: plc_tokens(o.parts_star, o.parts_star_adv, o.cells_star, o.cells_star_adv),
}


def accuracy(column: str) -> Summary:
    """Top-1 accuracy in % of the predictions in `column` against `label` (0 for no images)."""
    def summarize(frame: Any) -> float:
        return 100.0 * float((frame[column] == frame["label"]).sum()) / max(len(frame), 1)

    return summarize


def accuracy_change(frame: Any) -> float:
    """AC: accuracy points lost to the attack."""
    return accuracy("pred_before")(frame) - accuracy("pred_after")(frame)


for _spec in (
    MetricSpec("PLC", "PLC (location change, %)", "%", True, 1.0, order=10, csv_order=30,
               per_image=lambda o: PLC_KINDS[o.plc](o)),
    MetricSpec("PAC", "PAC (activation change, %)", "%", True, 1.0, order=20, csv_order=10,
               per_image=lambda o: pac(o.act_star, o.act_star_adv)),
    MetricSpec("PRC", "PRC (rank change)", "prototypes", True, 0.5, order=30, csv_order=20,
               per_image=lambda o: prc(o.act, o.act_adv, o.p_star, o.in_class)),
    MetricSpec("acc_before", "accuracy, clean images (%)", "%", False, 1.0, order=40, decimals=1,
               summary=accuracy("pred_before"), tol_groups=("acc",)),
    MetricSpec("acc_after", "accuracy, attacked images (%)", "%", False, 1.0, order=50, decimals=1,
               summary=accuracy("pred_after"), tol_groups=("acc",)),
    MetricSpec("AC", "AC (accuracy change, points)", "points", True, 1.0, order=60, decimals=1,
               summary=accuracy_change),
):
    register(_spec, source="built-in")
