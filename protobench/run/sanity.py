"""Numbers that ran but may not mean what they say: told on the console and recorded in meta.json.

Is the measured clean accuracy the one the model's publisher reports? A check of the preprocessing.
A model evaluated with the wrong normalization, crop, input size or split usually still runs, and
only its accuracy shows it. After a run, the clean accuracy is compared with the published one
(from the model catalogue, `protobench zoo`, or from the checkpoint's own file name, as several original
repositories write it: `10push0.7822.pth`); more than TOLERANCE points apart is a warning and is
recorded in meta.json (`accuracy_check`).

Also, in meta.json's `warnings` (the report shows them):
- clean accuracy at or below chance: the model does not recognise this data as it was trained to see
  it (the dataset's class order, the normalisation or the crop differ from training);
- part annotations of which no visible keypoint lies in any evaluated image: consistency and stability
  would read 0 and 100 although nothing was measured; they are left undefined (NaN).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

from protobench.errors import ProtobenchWarning

TOLERANCE = 2.0  # points of accuracy
# the accuracy the original code writes into a checkpoint's name: 10push0.7822.pth, DeiT_Tiny_finetuned0.8336.pth
_IN_NAME = re.compile(r"(?:push|finetuned)(0\.\d{2,6}|1\.0+)\.pth$")


def accuracy_in_name(path: str) -> float | None:
    """The accuracy in % a checkpoint's file name records, or None."""
    found = _IN_NAME.search(Path(path).name)
    return round(float(found.group(1)) * 100, 4) if found else None


def check(published: dict[str, Any] | None, measured: float | None, images: int) -> dict[str, Any] | None:
    """meta.json's accuracy_check, warning when |measured - published| > TOLERANCE points; None without both."""
    if not published or published.get("value") is None or measured is None or images < 1:
        return None
    value = float(published["value"])
    difference = round(measured - value, 2)
    p = min(max(value / 100, 0.0), 1.0)
    margin = round(196 * math.sqrt(p * (1 - p) / images), 2)  # 95% sampling margin of an accuracy on `images`
    record = {"published": value, "published_source": published.get("source", ""), "measured": round(measured, 2),
              "difference": difference, "tolerance": TOLERANCE, "images": images, "sampling_margin": margin,
              "ok": abs(difference) <= TOLERANCE}
    if not record["ok"]:
        warnings.warn(f"clean accuracy {measured:.2f}% is {abs(difference):.2f} points {'below' if difference < 0 else 'above'} "
                      f"the published {value:.2f}% ({record['published_source'] or 'published'}; on {images} images "
                      f"sampling alone moves it by about {margin:.1f}): check the normalization, input size, crop and "
                      "split (docs/zoo.md, Preprocessing check)", ProtobenchWarning, stacklevel=2)
    return record


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
