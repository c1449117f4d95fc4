"""The metrics (docs/metrics.md, The metrics): one spec per metric, in one registry. The built-ins
are the modules of `protobench/metrics/`, one per metric, named after it (`PAC.py` is PAC).

Everything that computes, writes or shows a metric reads METRICS: the benchmark loop's measure
step (per-image values), per_image.csv, per_prototype.csv and summary.csv, `protobench compare`
(direction, tolerance, --tol names), the CLI's tables and finetune's before/after table. A new
metric is one MetricSpec, registered with `register(spec)`, as one file in protobench/metrics/, or through the entry-point group
"protobench.metrics" (docs/metrics.md, Adding a metric).

Each metric belongs to a suite, the name `evaluate --metrics` selects it by: `misalignment` (the
attack's PLC, PAC, PRC and accuracies, the default), `consistency`, `stability`. What a metric is
computed from says which passes a run makes: a per-image or summary function reads the attack's
results; a per-prototype function reads the part hits of every (image, own-class prototype) pair
(protobench.core.partscores), and `needs_noise` adds the stability pass's noisy images.

This module imports no torch (compare and the CLI read the table without it); the per-image
functions get tensors and use their methods.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Sequence

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
    plc_q: float = 0.9  # pixel PLC: the quantile above which a map's region counts (the top 10%)

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
# PartRecords (protobench.core.partscores) -> per_prototype.csv columns, (P,) each; the metric's own among them
PerPrototype = Callable[[Any], dict[str, Any]]
MISALIGNMENT = "misalignment"  # the default suite: the attack's metrics
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
    suite: str = MISALIGNMENT  # the `evaluate --metrics` name that selects it
    per_prototype: PerPrototype | None = None  # one value per prototype: a per_prototype.csv column
    needs_noise: bool = False  # its per_prototype function reads the stability pass (codes_noisy)
    derived_from: tuple[str, ...] = ()  # the metrics it is computed from: compare reports it, gates those
    summary_rows: Summary | None = None  # per_image table -> per-row values whose mean is `summary` (compare)

    def __post_init__(self) -> None:
        for kind, word in (("metric name", self.name), ("suite", self.suite)):
            if not isinstance(word, str) or not _NAME.fullmatch(word):
                raise RegistryError(f"{kind} {word!r} must be a word of letters, digits and _ "
                                    "(it becomes a CSV column or an --metrics name)")
        if self.per_prototype is not None and (self.per_image is not None or self.summary is not None):
            raise RegistryError(f"metric {self.name!r}: a per_prototype function goes alone (no per_image "
                                "or summary function beside it)")
        if self.per_image is None and self.summary is None and self.per_prototype is None:
            raise RegistryError(f"metric {self.name!r} needs a per_image function, a summary function, or both "
                                "(or a per_prototype function)")
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
                                         expects="a protobench.core.metrics.MetricSpec", package="protobench.metrics")


def register(spec: MetricSpec, *, replace: bool = False, source: str = "registered at run time") -> MetricSpec:
    """Add `spec` to METRICS under its own name (a taken name needs replace=True)."""
    METRICS.add(spec.name, spec, replace=replace, source=source)
    return spec


def specs(suites: Sequence[str] | None = None) -> list[MetricSpec]:
    """Every registered metric (plugins included), or those of `suites`, in table order."""
    found = []
    for name, spec in METRICS.items():
        if spec.name != name:
            raise RegistryError(f"metric {name!r} is registered with a spec named {spec.name!r}: use one name")
        if suites is None or spec.suite in suites:
            found.append(spec)
    return sorted(found, key=lambda s: (s.order, s.name))


def per_image_specs(suites: Sequence[str] | None = None) -> list[MetricSpec]:
    """The metrics with a per-image column, in per_image.csv's order."""
    chosen = [s for s in specs(suites) if s.per_image is not None]
    return sorted(chosen, key=lambda s: (s.order if s.csv_order is None else s.csv_order, s.name))


def per_prototype_specs(suites: Sequence[str] | None = None) -> list[MetricSpec]:
    """The metrics with a per-prototype column, in table order."""
    return [s for s in specs(suites) if s.per_prototype is not None]


def suites() -> list[str]:
    """Every suite name, in the order of its first metric (misalignment first)."""
    return list(dict.fromkeys(spec.suite for spec in specs()))


def measured(rows: Sequence[dict[str, Any]]) -> list[MetricSpec]:
    """The metrics of every suite that one of `rows` (summary rows) measured: a suite is measured
    when a row holds a column of one of its metrics. Tables and compare show these and no others,
    so a run without --metrics consistency shows no empty consistency line."""
    chosen = {spec.suite for spec in specs() for row in rows if spec.column in row}
    return specs(sorted(chosen))
