"""One run's part of the page: the summary in words, the tables, the prototype gallery and the strips.

build.py decides where the pixels come from and what is written; this module turns one run and its
pixels into the template's context (every number as text, every picture with an alt text that says
what it shows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from protobench.report.page import Picture
from protobench.report.runs import Run

KINDS = ("worst", "median", "best")  # the order of the strip groups per metric


def class_names(run: Run, got: dict[str, Any]) -> list[str]:
    """The class names: the drawn pixels' (the dataset's), else meta.json's, else none (numbers)."""
    if got.get("pixels") is not None and got["pixels"].classes:
        return list(got["pixels"].classes)
    names = run.meta.get("classes")
    return [str(c) for c in names] if isinstance(names, list) else []


def prototype_part(run: Run, name: str, got: dict[str, Any], options: Any, files: dict[str, bytes],
                   log: Callable[[str], None]) -> dict[str, Any]:
    """The prototype table (rows linked to the gallery and the strips), the gallery and its cards."""
    from protobench.report.gallery import card, gallery_items, per_prototype_extra, prototype_side
    from protobench.report.page import prototype_rows
    from protobench.report.tables import prototype_table

    classes = class_names(run, got)
    table = prototype_table(run.per_image)
    files[f"{name}-prototypes.csv"] = table.to_csv(index=False).encode("utf-8")
    rows = run.per_image.set_index("index", drop=False)
    strips_of: dict[int, list[dict[str, str]]] = {}
    for pick in got["picks"]:
        links = strips_of.setdefault(int(rows.loc[pick.index, "proto"]), [])
        if not any(link["index"] == pick.index for link in links):
            links.append({"index": pick.index, "title": pick.title, "anchor": f"{name}-image{pick.index}"})
    patches, note = prototype_side(run, options, sorted(strips_of), got.get("adapter"), log)
    items = gallery_items(patches, table, classes, strips_of, per_prototype_extra(run))
    for item in items:
        item["anchor"] = f"{name}-proto{item['proto']}"
        if item["patch"] is not None:
            picture = Picture(card(item["patch"], f"prototype {item['proto']}, class {item['cls']}"),
                              f"{name}-prototype-{item['proto']}.png")
            files[picture.file] = picture.png
            item["card"] = picture
            item["alt"] = (f"Prototype {item['proto']}'s source: {item['source']}; left the whole image with the "
                           "patch boxed, right the patch enlarged.")
    table_rows = prototype_rows(table, classes)
    for row in table_rows:
        row["gallery"] = f"{name}-proto{row['proto']}" if row["proto"] in strips_of else ""
        row["strips"] = strips_of.get(row["proto"], [])
    return {"prototypes": table_rows, "prototypes_file": f"{name}-prototypes.csv", "gallery": items,
            "gallery_note": note, "patches": patches, "classes": classes}


def strips(run: Run, name: str, got: dict[str, Any], files: dict[str, bytes], patches: dict[int, Any],
           classes: list[str]) -> list[dict[str, Any]]:
    """The strip groups (by PAC, then PLC: worst, median, best); an image drawn once, linked after."""
    from protobench.report.story import alt_text, strip_facts
    from protobench.report.strips import Canvas, strip

    pixels = got["pixels"]
    if pixels is None:
        return []
    rows = run.per_image.set_index("index", drop=False)
    drawn: dict[int, Any] = {}
    canvas = Canvas()  # one figure, drawn again for each strip
    groups: dict[str, list[dict[str, Any]]] = {}
    for pick in sorted(got["picks"], key=lambda p: (p.metric, KINDS.index(p.kind), p.rank)):
        numbers = rows.loc[pick.index].to_dict()
        patch = patches.get(int(numbers["proto"]))
        item = {"title": pick.title, "index": pick.index, "path": str(numbers["path"]),
                "anchor": f"{name}-image{pick.index}", "data": "", "first": "",
                "facts": strip_facts(numbers, classes, patch), "proto_anchor": f"{name}-proto{int(numbers['proto'])}"}
        if pick.index in drawn:
            item["first"] = drawn[pick.index].title
        else:
            drawn[pick.index] = pick
            heading = f"{run.label}: {pick.title}, {Path(str(numbers['path'])).name}"
            picture = Picture(strip(pixels, pixels.row(pick.index), numbers, heading, patch, canvas),
                              f"{name}-{pick.kind}-{pick.metric}-{pick.rank}.png")
            files[picture.file] = picture.png
            item.update(data=picture.data, width=picture.width, height=picture.height, file=picture.file,
                        alt=alt_text(numbers, classes))
        title = f"{pick.kind.capitalize()} image{'s' if pick.kind != 'median' else ''} by {pick.metric}"
        groups.setdefault(title, []).append(item)
    return [{"title": title, "pictures": items} for title, items in groups.items()]


def words(run: Run, classes: list[str]) -> dict[str, Any]:
    """The run's summary in sentences, its reference values, the per-class table, and what was not measured."""
    from protobench.core.metrics import measured, specs
    from protobench.report.story import histogram_alt, per_class, quartiles, references, summary_sentences

    missing = sorted({spec.suite for spec in specs()} - {spec.suite for spec in measured([run.summary])})
    unmeasured = (f"Not measured in this run: {', '.join(missing)} (evaluate --metrics "
                  f"misalignment,{','.join(missing)} adds them; docs/metrics.md, Consistency and stability)."
                  if missing else "")
    return {"story": summary_sentences(run), "references": references(run), "per_class": per_class(run, classes),
            "unmeasured": unmeasured, "quartiles": quartiles(run), "histograms_alt": histogram_alt(run)}
