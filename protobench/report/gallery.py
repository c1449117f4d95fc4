"""The prototype gallery: each drawn prototype's source patch, its numbers, and links to its strips.

The source patches come from report.sources (a search of the training data, cached in the run
directory); this module loads the verified checkpoint for that search, turns each found patch into
pixels, and draws one small card per prototype (the source image with the patch boxed, and the
patch enlarged).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from protobench.report.figures import figure, png
from protobench.report.runs import ReportError, Run


@dataclass
class Patch:
    """A source patch ready to draw."""

    proto: int
    pixels: np.ndarray  # (S, S, 3) in [0, 1]: the whole source image
    box: tuple[int, int, int, int]  # top, bottom, left, right (exclusive)
    short: str  # the panel title: 'training image 1572'
    where: str  # the searched data, in words
    source: Any  # report.sources.Source


def prototype_side(run: Run, options: Any, protos: list[int], adapter: Any = None,
                   log: Callable[[str], None] = lambda _: None) -> tuple[dict[int, Patch], str]:
    """The source patches of `protos` ({} and why, in words, when they cannot be found)."""
    from protobench.errors import ProtobenchError
    from protobench.report.sources import find_sources

    if options.examples == "none" or not protos:
        return {}, ""
    try:
        adapter = adapter or verified_adapter(run, options)
        sources = find_sources(run, adapter, protos, options.train_data, log, options.data,
                               Path(options.out) if options.out else None)
    except ProtobenchError as err:
        return {}, f"No source patches: {err}"
    info = adapter.info
    patches = {}
    for p, source in sources.found.items():
        from protobench.report.strips import pixels_of

        image = sources.dataset[source.index][0]
        kind = "training" if sources.training else "evaluated"
        patches[p] = Patch(p, pixels_of(image, info.mean, info.std), source.box, f"{kind} image {source.index}",
                           sources.where, source)
    note = "" if sources.training else (
        f"No training data was found (no --train-data, and {run.meta.get('dataset')} has no training split): each "
        "prototype is shown with its nearest patch in the evaluated data, which need not be the patch it was "
        "projected onto.")
    return patches, note


def verified_adapter(run: Run, options: Any) -> Any:
    """The run's model from its verified checkpoint (sha256) with its recorded distance, on the report's device."""
    from protobench.report.pixels import adapter_of, adapter_options_of, checkpoint_path, distance_of
    from protobench.run.devices import resolve_device
    from protobench.run.evaluate import load_adapter

    name = adapter_of(run, options.adapter, options.trusted)  # a run directory never chooses code to import
    path = checkpoint_path(run, options.ckpt)
    return load_adapter(name, path, adapter_options_of(run), resolve_device(options.device), distance_of(run))


def card(patch: Patch, title: str) -> bytes:
    """The source image with its patch boxed (left) and the patch enlarged (right)."""
    from protobench.report.strips import _rectangle, panel

    fig = figure(4.4, 2.45)
    left, right = fig.subplots(1, 2)
    top, bottom, x0, x1 = patch.box
    show = {"interpolation": "nearest" if patch.pixels.shape[0] < 160 else "antialiased"}
    left.imshow(patch.pixels, **show)
    left.add_patch(_rectangle(x0 - 0.5, top - 0.5, x1 - x0, bottom - top))
    panel(left, patch.short)
    right.imshow(patch.pixels[top:bottom, x0:x1], interpolation="nearest")
    panel(right, f"the patch ({bottom - top} x {x1 - x0} px)")
    fig.suptitle(title, fontsize=9.5, parse_math=False)
    return png(fig)


def gallery_items(patches: dict[int, Patch], table: Any, classes: list[str], strips_of: dict[int, list],
                  extra: dict[int, dict[str, str]]) -> list[dict[str, Any]]:
    """One gallery entry per drawn prototype, in the prototype table's order (most fragile first)."""
    from protobench.report.page import number
    from protobench.report.strips import class_name

    items = []
    for r in table.itertuples():
        p = int(r.proto)
        if p not in strips_of:
            continue
        patch = patches.get(p)
        source = patch.source if patch else None
        items.append({
            "proto": p, "cls": class_name(int(r.proto_class), classes), "chosen": int(r.chosen),
            "PAC": number(r.PAC_mean), "PLC": number(r.PLC_mean), "PRC": number(r.PRC_mean),
            "extra": extra.get(p, {}), "strips": strips_of[p], "patch": patch, "card": None, "alt": "",
            "source": "" if source is None else f"{patch.short} of {patch.where} ({Path(source.path).name}, class "
                                                 f"{class_name(source.label, classes)}), activation "
                                                 f"{source.activation:.3g} there",
            "weight": "not a linear last layer" if source is None or source.weight is None else f"{source.weight:.3g}",
        })
    return items


def per_prototype_extra(run: Run) -> dict[int, dict[str, str]]:
    """consistency and stability of each prototype, where the run measured them (per_prototype.csv)."""
    import pandas as pd

    path = run.dir / "per_prototype.csv"
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError):
        raise ReportError(f"{path} is not a readable CSV (damaged file)") from None
    columns = [c for c in ("consistency", "stability") if c in table.columns]
    if "prototype" not in table.columns or not columns:
        return {}
    from protobench.report.page import number

    ids = pd.to_numeric(table["prototype"], errors="coerce")
    bad = (ids.isna() | (ids % 1 != 0) | (ids < 0) | (ids >= 2**31)).to_numpy()
    if bad.any():
        row = int(bad.nonzero()[0][0])
        shown = " ".join(str(table["prototype"].iloc[row]).split())[:40]
        raise ReportError(f"{path}:{row + 2}: prototype is {shown!r}, not a whole number >= 0 (damaged file): "
                          "restore it, or run protobench evaluate again")
    return {int(p): {c: number(row[c], 1) for c in columns} for p, row in zip(ids, table.to_dict("records"))}
