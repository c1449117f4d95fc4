"""report.html: one self-contained page (jinja2, template.html beside this module).

Every string from a run (paths, model names, class names, notes) goes through jinja2's HTML
autoescaping; images are inline base64 PNGs; no script, no link, no font or style from anywhere
else, so the page works offline, with JavaScript off, and prints.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Picture:
    """A PNG as the page embeds it and as it is written beside the page."""

    png: bytes
    file: str  # its file name beside report.html

    @property
    def data(self) -> str:
        return base64.b64encode(self.png).decode("ascii")

    @property
    def width(self) -> int:
        return png_size(self.png)[0]

    @property
    def height(self) -> int:
        return png_size(self.png)[1]


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def slug(i: int, label: str) -> str:
    """A file-name and anchor-safe name for run i: 'run1-protoshapes'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._-")[:60]
    return f"run{i + 1}-{cleaned}" if cleaned else f"run{i + 1}"


def prototype_rows(table: pd.DataFrame, classes: list[str]) -> list[dict[str, Any]]:
    from protobench.report.strips import class_name

    return [{"proto": int(r.proto), "cls": class_name(int(r.proto_class), classes), "chosen": int(r.chosen), "PAC": number(r.PAC_mean),
             "PLC": number(r.PLC_mean), "PRC": number(r.PRC_mean)} for r in table.itertuples()]


def number(value: Any, decimals: int = 2, signed: bool = False) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(value):
        return "-"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def compare_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"metric": r["metric"], "base": number(r["base"]), "new": number(r["new"]),
             "delta": number(r["delta"], signed=True), "tolerance": number(r["tolerance"]), "status": r["status"]}
            for r in table.to_dict("records")]


def render(context: dict[str, Any]) -> str:
    """The page for `context` (see build.py); all text escaped."""
    import jinja2

    from protobench import __version__

    template = resources.files("protobench.report").joinpath("template.html").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    return env.from_string(template).render(
        version=__version__, date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **context)
