"""What a run's numbers say, in words: the summary paragraph, the per-class table, each strip's numbers
and alt text, and the reference values. Pure pandas on per_image.csv and summary.csv.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from protobench.report.runs import Run, describe_protocol, finite

MOVED = 50.0  # PLC (%) from which the summary counts an image's heatmap as moved (or collapsed)
# The built-in demo model measured with `protobench evaluate` (docs/demo.md): what a reader can hold a run's
# numbers against. Only shown for a run of the same protocol; a published figure is listed only where its
# protocol is one protobench reproduces (see references()).
REFERENCES = ({"what": "the built-in demo model (ProtoPNet on ProtoShapes, all 150 test images: "
                       "protobench evaluate --limit 150; docs/demo.md)",
               "protocol": "default", "PAC": 39.4, "PLC": 33.6, "acc_before": 100.0, "acc_after": 80.0},)


def flag(frame: pd.DataFrame, column: str) -> pd.Series | None:
    """A boolean per-image column (None where the table predates it)."""
    if column not in frame.columns:
        return None
    return frame[column].astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def share(k: int, n: int) -> str:
    return f"{k} of {n} ({100 * k / n:.0f}%)" if n else "0"


def summary_sentences(run: Run) -> list[str]:
    """The run in plain sentences: the attack, the activation, the heatmap (moved or collapsed), the
    protection, other-class prototypes and accuracy."""
    frame, n = run.per_image, run.n
    pac = pd.to_numeric(frame["PAC"], errors="coerce").dropna()
    plc = pd.to_numeric(frame["PLC"], errors="coerce")
    collapsed = flag(frame, "collapsed")
    high = plc >= MOVED
    protected = pd.to_numeric(frame["protected_frac"], errors="coerce").dropna() \
        if "protected_frac" in frame.columns else pd.Series(dtype=float)
    text = [f"The attack ({describe_protocol(run.protocol)}) changed only pixels outside each image's protected "
            f"region" + (f", {100 * protected.mean():.0f}% of the image on average" if len(protected) else "")
            + f", on {n} images."]
    if len(pac):
        text.append(f"The explained prototype's activation fell by {pac.mean():.1f}% on average (PAC; median "
                    f"{pac.median():.1f}%, {share(int((pac >= 50).sum()), len(pac))} images lost half of it or more).")
    if collapsed is None:
        text.append(f"Its heatmap's top-10% region changed by {plc.mean():.1f}% on average (PLC); on "
                    f"{share(int(high.sum()), n)} images by {MOVED:.0f}% or more. This run's per_image.csv has no "
                    "`collapsed` column (an older version): a move and a collapse cannot be told apart here.")
    else:
        moved = int((high & ~collapsed).sum())
        text.append(f"Its heatmap's top-10% region changed by {plc.mean():.1f}% on average (PLC): on "
                    f"{share(moved, n)} images it moved ({MOVED:.0f}% or more, the map still peaked), and on "
                    f"{share(int(collapsed.sum()), n)} the map collapsed (went flat: its peak stands above its median "
                    "by less than a third of before), where PLC measures noise rather than a move.")
    if "top_outside" in frame.columns:
        outside = pd.to_numeric(frame["top_outside"], errors="coerce")
        text.append(f"The protected box covers the top 5% of each map plus a margin, PLC compares the top 10%: on "
                    f"average {outside.mean():.0f}% of that region lay outside the box and could be attacked "
                    f"(more than half of it on {share(int((outside > 50).sum()), n)} images).")
    other = int((frame["proto_class"] != frame["label"]).sum())
    if other:
        text.append(f"On {share(other, n)} images the explained prototype belongs to another class than the image's "
                    f"({run.protocol.get('select', 'top-proto')} picks the most active prototype of any class).")
    before, after = finite(run.summary.get("acc_before")), finite(run.summary.get("acc_after"))
    if not math.isnan(before + after):
        text.append(f"Accuracy went from {before:.1f}% on the clean images to {after:.1f}% on the attacked ones "
                    f"({before - after:.1f} points).")
    return text


def references(run: Run) -> list[str]:
    """Reference values for this run's protocol, in words (none: say why)."""
    name = run.protocol.get("name")
    found = [r for r in REFERENCES if r["protocol"] == name]
    lines = [f"{r['what']}, {name} protocol: PAC {r['PAC']:.1f}%, PLC {r['PLC']:.1f}%, accuracy "
             f"{r['acc_before']:.1f}% clean, {r['acc_after']:.1f}% attacked." for r in found]
    lines.append("No published figure is listed: the paper's PLC, PAC and PRC were measured with what "
                 "--protocol reference reproduces (uniform noise outside the box, docs/metrics.md) on its own "
                 "checkpoints; compare with them only a reference-protocol run of the same checkpoint and data.")
    return lines


def per_class(run: Run, classes: list[str]) -> list[dict[str, str]]:
    """One row per true class: images, accuracy before and after, mean PAC, PLC, PRC, collapsed maps and
    other-class prototypes."""
    from protobench.report.page import number
    from protobench.report.strips import class_name

    frame = run.per_image.copy()
    frame["_collapsed"] = flag(frame, "collapsed") if "collapsed" in frame.columns else float("nan")
    rows = []
    for label, group in frame.groupby("label", sort=True):
        rows.append({"cls": class_name(int(label), classes), "n": str(len(group)),
                     "acc_before": number(100 * (group["pred_before"] == label).mean(), 1),
                     "acc_after": number(100 * (group["pred_after"] == label).mean(), 1),
                     "PAC": number(pd.to_numeric(group["PAC"], errors="coerce").mean()),
                     "PLC": number(pd.to_numeric(group["PLC"], errors="coerce").mean()),
                     "PRC": number(pd.to_numeric(group["PRC"], errors="coerce").mean()),
                     "collapsed": "-" if "collapsed" not in frame.columns else str(int(group["_collapsed"].sum())),
                     "other": str(int((group["proto_class"] != label).sum()))})
    return rows


def strip_facts(numbers: dict[str, Any], classes: list[str], patch: Any = None) -> list[tuple[str, str]]:
    """The numbers beside a strip, as (label, value) text."""
    from protobench.report.strips import _true, class_name

    label, proto_class = int(numbers["label"]), int(numbers["proto_class"])
    facts = [("image", f"{int(numbers['index'])}, class {class_name(label, classes)}"),
             ("prototype p*", f"{int(numbers['proto'])}, class {class_name(proto_class, classes)}"
              + ("" if proto_class == label else " (another class than the image's: the most active prototype "
                                                 "of any class)"))]
    if patch is not None:
        weight = patch.source.weight
        facts += [("its source", f"{patch.short} ({patch.source.path})"),
                  ("class-connection weight", "-" if weight is None else f"{weight:.3g}")]
    facts += [("activation", f"{float(numbers['act_before']):.3g} -> {float(numbers['act_after']):.3g} "
                             f"(PAC {float(numbers['PAC']):.1f}%)"),
              ("PLC", f"{float(numbers['PLC']):.1f}%")]
    if "collapsed" in numbers:
        facts.append(("map collapsed", "yes: flat after the attack, PLC measures no move" if _true(numbers["collapsed"])
                      else "no"))
    if "top_outside" in numbers and not pd.isna(numbers["top_outside"]):
        facts.append(("top-10% region outside the box", f"{float(numbers['top_outside']):.0f}% (attacked)"))
    facts += [("PRC", f"{int(numbers['PRC']):+d}"),
              ("prediction", f"{class_name(int(numbers['pred_before']), classes)} -> "
                             f"{class_name(int(numbers['pred_after']), classes)}")]
    return facts


def alt_text(numbers: dict[str, Any], classes: list[str]) -> str:
    """What the strip shows, in one sentence, for a reader who cannot see it."""
    from protobench.report.strips import _true, class_name

    what = ("the attacked map collapsed (went flat)" if _true(numbers.get("collapsed"))
            else f"its top-10% region changed by {float(numbers['PLC']):.0f}% (PLC)")
    outside = numbers.get("top_outside")
    tail = "" if outside is None or pd.isna(outside) else (
        f"; {float(outside):.0f}% of the clean top-10% region lay outside the protected box")
    return (f"Image {int(numbers['index'])} (class {class_name(int(numbers['label']), classes)}) beside prototype "
            f"{int(numbers['proto'])}'s source patch, with the prototype's heatmap before and after the attack: "
            f"activation {float(numbers['act_before']):.3g} to {float(numbers['act_after']):.3g}, {what}{tail}.")


def quartiles(run: Run) -> list[dict[str, Any]]:
    """min, quartiles and max of each drawn metric: the histograms' numbers as text."""
    from protobench.report.page import number

    rows = []
    for metric in ("PAC", "PLC", "PRC", "top_outside"):
        if metric not in run.per_image.columns:
            continue
        values = pd.to_numeric(run.per_image[metric], errors="coerce").dropna()
        label = {"top_outside": "top-10% region outside the box (%)", "PAC": "PAC (%)", "PLC": "PLC (%)"}.get(metric,
                                                                                                            metric)
        rows.append({"metric": label, "cells": [number(values.quantile(q)) if len(values) else "-"
                                                 for q in (0, 0.25, 0.5, 0.75, 1)]})
    return rows


def histogram_alt(run: Run) -> str:
    """The histograms in one sentence."""
    parts = []
    for metric in ("PAC", "PLC", "PRC"):
        values = pd.to_numeric(run.per_image[metric], errors="coerce").dropna()
        if len(values):
            parts.append(f"{metric} from {values.min():.1f} to {values.max():.1f}, median {values.median():.1f}, "
                         f"mean {values.mean():.1f}")
    return f"Histograms of the per-image metrics over {run.n} images: " + "; ".join(parts) + "."
