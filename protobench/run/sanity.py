"""Results that ran but cannot mean what they say: told on the console and recorded in meta.json's
`warnings` (the report shows them), never silent.

- Clean accuracy at or below chance: the model does not recognise this data as it was trained to see
  it (the dataset's class order, the normalisation or the crop differ from training).
- Part annotations of which no visible keypoint lies in any evaluated image: consistency and stability
  would read 0 and 100 although nothing was measured; they are left undefined (NaN).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from protobench.errors import ProtobenchWarning

NO_PART_INSIDE = ("no annotated part fell inside any evaluated image (every keypoint is hidden or outside its "
                  "image): consistency and stability are left undefined; check the part annotations' x, y (pixels "
                  "of the image as displayed) and visible columns")


def parts_inside(found: Any, size: int) -> bool:
    """Whether any visible keypoint of the evaluated images (protobench.data.parts.PartLocations, in the
    size x size input) lies in the input, where a prototype's box can hold it."""
    table = found.table
    u, v, shown = table[..., 0], table[..., 1], table[..., 2] > 0
    return bool((shown & (u >= 0) & (u <= size) & (v >= 0) & (v <= size)).any())


def part_warning(found: Any, size: int) -> str | None:
    return None if found is None or parts_inside(found, size) else NO_PART_INSIDE


def accuracy_warning(summary: dict[str, Any], num_classes: int) -> str | None:
    """The warning for a clean accuracy (summary's acc_before, %) at or below chance, 100 / classes."""
    try:
        accuracy = float(summary.get("acc_before"))
    except (TypeError, ValueError):
        return None
    chance = 100.0 / max(int(num_classes), 1)
    if not math.isfinite(accuracy) or accuracy > chance + 1e-9 or num_classes < 2:
        return None
    return (f"clean accuracy is {accuracy:.1f}%, at or below chance ({chance:.1f}% for {num_classes} classes): the "
            "model does not see this data as it was trained to, so every number here is suspect; likely causes: "
            "the dataset's classes are in another order than the model's (class folders named or sorted "
            "differently), another normalisation (mean, std), or another crop (e.g. CUB without its boxes)")


def run_warnings(summary: dict[str, Any], num_classes: int, found: Any, size: int) -> list[str]:
    """meta.json's `warnings`; the accuracy one is also told now (the part one was told before the run)."""
    told = accuracy_warning(summary, num_classes)
    if told:
        warnings.warn(told, ProtobenchWarning, stacklevel=2)
    return [text for text in (told, part_warning(found, size)) if text]
