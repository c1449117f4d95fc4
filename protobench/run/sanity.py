"""Is the measured clean accuracy the one the model's publisher reports? A check of the preprocessing.

A model evaluated with the wrong normalization, crop, input size or split usually still runs, and
only its accuracy shows it. After a run, the clean accuracy is compared with the published one
(from the model catalogue, `protobench zoo`, or from the checkpoint's own file name, as several original
repositories write it: `10push0.7822.pth`); more than TOLERANCE points apart is a warning and is
recorded in meta.json (`accuracy_check`).
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
