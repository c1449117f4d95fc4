"""`protobench report RUN_DIR...`: read the runs, get the drawn images' pixels, draw, write the page.

Everything that can fail on the input (directories, counts, checkpoints, data, re-run numbers) is
checked before the first file is written, so a refused report leaves --out as it was.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from protobench.lock import holding
from protobench.report.page import Picture, prototype_rows, slug
from protobench.report.runs import ReportError, Run, load_runs
from protobench.report.tables import check_counts, picks

EXAMPLES = ("rerun", "saved", "none")  # --examples: where the drawn images' tensors come from
REPORT = "report.html"
WRITING = ".protobench-report-writing"  # present while a report is written: a rerun may replace what it left


@dataclass
class Options:
    out: str | None = None  # default: RUN_DIR/report for one run directory, protobench-results/report for several
    worst: int = 3  # images drawn per metric (PAC, PLC), worst first
    best: int = 1  # and best first
    examples: str = "rerun"
    ckpt: str | None = None  # the checkpoint's new place (one model only); its sha256 is still checked
    data: str | None = None  # the dataset's new place (one model only); its fingerprint is still checked
    device: str = "auto"  # where to re-run
    adapter: str | None = None  # the adapter to re-run with (one model only): the user's --adapter
    trusted: tuple[str, ...] = ()  # import paths the user typed (evaluate's --adapter), usable when recorded
    force: bool = False  # draw a re-run whose numbers differ from per_image.csv (marked in the page)
    up_to: bool = False  # worst / best are at most: evaluate's own report of a run with fewer images
    train_data: str | None = None  # where to search the prototypes' source patches [the run's data's training split]
    kept: dict[str, Any] | None = None  # run directory -> report.kept.Keeper: tensors evaluate kept while running
    rerun: Callable[[Run, list[int]], Any] | None = None  # (run, indices) -> Pixels: the API's, from memory
    directory: str | None = None  # how the page names the run's directory (default: its path)


def build_report(paths: list[str], options: Options, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Write report.html and its PNG and CSV files into the output directory; returns where and what."""
    runs, notes = load_runs(paths)
    check_options(runs, options)
    out = output_dir(paths, options.out)
    options = replace(options, out=str(out))  # the source-patch cache lives there too
    with holding(out):  # one run writing `out` at a time
        pixels = {id(run): pixels_for(run, options, log) for run in runs}  # the slow part: before any file
        files: dict[str, bytes] = {}
        context = {"title": ", ".join(dict.fromkeys(run.label for run in runs)), "notes": notes, "runs": []}
        sections(runs, pixels, options, files, context, log)
        context["convergence"] = convergence_picture(runs, files)
        if len(runs) > 1:
            from protobench.report.figures import comparison

            context["comparison"] = add(files, Picture(comparison(runs), "comparison.png"))
            context["compare_tables"] = compare_tables(runs)
            context.update(comparison_text(runs, context["runs"]))
        html = _render(context)
        write(out, files, html)
    return {"out": str(out), "html": str(out / REPORT), "bytes": len(html.encode("utf-8")), "files": len(files) + 1,
            "runs": len(runs), "notes": notes}


def check_options(runs: list[Run], options: Options) -> None:
    from protobench.options import choice
    from protobench.run.devices import check_device_name

    choice("--examples", options.examples, EXAMPLES)
    check_device_name(options.device)
    if (options.ckpt or options.data or options.adapter) and len(runs) > 1:
        raise ReportError("--ckpt, --data and --adapter name one model's files and code: report that run on its own")
    if (options.ckpt or options.data or options.adapter) and options.examples != "rerun":
        raise ReportError("--ckpt, --data and --adapter are for re-running: drop them with --examples saved or none")
    for run in [] if options.up_to else runs:
        check_counts(run, options.worst, options.best)


def output_dir(paths: list[str], out: str | None) -> Path:
    """--out, or RUN_DIR/report: empty, new, or an earlier report, finished or interrupted (which the new
    one replaces)."""
    path = Path(out) if out else (Path(paths[0]) / "report" if len(paths) == 1 else Path("protobench-results/report"))
    if path.exists() and not path.is_dir():
        raise ReportError(f"--out {path} is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not ((path / REPORT).is_file() or (path / WRITING).is_file()):
        raise ReportError(f"--out {path} holds other files and no earlier {REPORT}: choose a new or empty directory")
    from protobench.files import check_writable_dir

    check_writable_dir(path)
    return path


def pixels_for(run: Run, options: Options, log: Callable[[str], None]) -> dict[str, Any]:
    """The drawn images' tensors for `run` ({'pixels': Pixels or None, 'problem': text, 'picks': [...]})."""
    chosen = picks(run.per_image, options.worst, options.best)
    if options.examples == "none" or not chosen:
        return {"pixels": None, "problem": "", "picks": []}
    indices = sorted({pick.index for pick in chosen})
    if options.examples == "saved":
        from protobench.report.examples import load_examples

        pixels = load_examples(run)
        lacking = [i for i in indices if i not in pixels.indices]
        if lacking:
            raise ReportError(f"{run.dir} kept the tensors of {len(pixels.indices)} images (--save-examples), not of "
                              f"image {lacking[0]}: ask for fewer with --worst / --best, or use --examples rerun")
        return {"pixels": pixels, "problem": "", "picks": chosen}
    if options.rerun is not None:
        return {"pixels": options.rerun(run, indices), "problem": "", "picks": chosen}
    kept = _kept(run, options, indices)
    lacking = [i for i in indices if kept is None or i not in kept.indices]
    if not lacking:
        return {"pixels": kept, "problem": "", "picks": chosen}
    from protobench.report.pixels import verified_rerun

    pixels, found = verified_rerun(run, lacking, force=options.force, ckpt=options.ckpt, data=options.data,
                                   adapter=options.adapter, trusted=options.trusted, device=options.device, log=log)
    pixels.source += f" (sha256 {run.meta.get('checkpoint_sha256')} verified, data fingerprint verified)"
    problem = ""
    if found:
        problem = (f"--force: the re-run differs from per_image.csv on {len(found)} numbers (first: {found[0]}); "
                   "these pictures may not show what the numbers measured")
    else:
        pixels.source += "; every re-run number equals per_image.csv within the tolerance of docs/report.md"
    if kept is not None:
        from protobench.report.kept import merge

        source = f"{kept.source}, {len(kept.indices)} images; and {pixels.source}, {len(lacking)} images"
        pixels = merge(kept, pixels)
        pixels.source = source
    return {"pixels": pixels, "problem": problem, "picks": chosen}


def _kept(run: Run, options: Options, indices: list[int]) -> Any:
    """The drawn images among the tensors evaluate kept for `run` (None: none kept)."""
    keeper = (options.kept or {}).get(str(run.dir.resolve()))
    info = run.meta.get("model_info") if isinstance(run.meta.get("model_info"), dict) else {}
    pixels = keeper.pixels(info.get("mean"), info.get("std"), run.meta.get("classes") or []) if keeper else None
    present = [i for i in indices if pixels is not None and i in pixels.indices]
    if not present:
        return None
    from protobench.report.kept import select

    return select(pixels, present)


def sections(runs: list[Run], pixels: dict[int, dict], options: Options, files: dict[str, bytes],
             context: dict[str, Any], log: Callable[[str], None] = lambda _: None) -> None:
    """One section per run: facts, summary, histograms (overlaid per checkpoint), prototypes, strips."""
    from protobench.report.figures import histograms
    from protobench.report.sections import prototype_part, strips, words
    from protobench.report.tables import facts, header_rows

    groups: dict[Any, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.meta.get("checkpoint_sha256") or id(run)].append(run)
    first: dict[int, dict] = {}
    for i, run in enumerate(runs):
        name = slug(i, run.label)
        got = pixels[id(run)]
        rows = [(k, options.directory if k == "directory" and options.directory else v) for k, v in facts(run)]
        section = {"slug": name, "label": run.label, "n": run.n, "facts": rows, "summary": header_rows(run),
                   "histograms": None, "histograms_caption": "", "overlay_in": None}
        group = groups[run.meta.get("checkpoint_sha256") or id(run)]
        if group[0] is run:
            section["histograms"] = add(files, Picture(histograms(group, _histogram_title(group)),
                                                       f"{name}-histograms.png"))
            section["histograms_caption"] = _histogram_caption(group)
            first[id(run)] = section
        else:
            section["overlay_in"] = first[id(group[0])]
        part = prototype_part(run, name, got, options, files, log)
        section.update(part, pixels_problem=got["problem"],
                       pixels_source=got["pixels"].source if got["pixels"] is not None else "",
                       strips=strips(run, name, got, files, part["patches"], part["classes"]),
                       **words(run, part["classes"]))
        context["runs"].append(section)


def add(files: dict[str, bytes], picture: Picture) -> Picture:
    files[picture.file] = picture.png
    return picture


def _histogram_title(group: list[Run]) -> str:
    return (f"{group[0].label}: per-image distributions" if len(group) == 1 else
            f"{len(group)} runs of checkpoint {str(group[0].meta.get('checkpoint_sha256'))[:12]}..., overlaid")


def _histogram_caption(group: list[Run]) -> str:
    text = "Number of images per value of each metric; the vertical line is the mean. PAC of an image whose " \
           "activation was 0 is undefined and left out."
    if len(group) > 1:
        text += " Runs of the same checkpoint (e.g. the pgd and the reference protocol) are overlaid on shared bins."
    return text


def comparison_text(runs: list[Run], sections: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparison chart's numbers as a table, and its alt text."""
    from protobench.core.metrics import measured
    from protobench.report.tables import fmt

    specs = measured([run.summary for run in runs])
    columns, rows = [], []
    for spec in specs:
        columns.append(f"{spec.name} mean [95% CI]" if spec.summary is None else spec.label)
    for run, section in zip(runs, sections):
        values = []
        for spec in specs:
            mean = fmt(run.summary.get(spec.column), spec.decimals)
            if spec.summary is None:
                mean += (f" [{fmt(run.summary.get(f'{spec.name}_ci_low'), spec.decimals)}, "
                         f"{fmt(run.summary.get(f'{spec.name}_ci_high'), spec.decimals)}]")
            values.append(mean)
        rows.append({"slug": section["slug"], "label": run.label, "cells": values})
    alt = "Means and 95% intervals per run: " + "; ".join(
        f"{row['label']}: " + ", ".join(f"{c.split(' ')[0]} {v}" for c, v in zip(columns, row["cells"]))
        for row in rows) + "."
    return {"comparison_columns": columns, "comparison_rows": rows, "comparison_alt": alt}


def convergence_picture(runs: list[Run], files: dict[str, bytes]) -> Picture | None:
    """The attack's convergence over the steps (convergence.csv of each run), when a run recorded it."""
    from protobench.report.figures import convergence

    drawn = convergence(runs)
    return add(files, Picture(drawn, "convergence.png")) if drawn is not None else None


def compare_tables(runs: list[Run]) -> list[dict[str, Any]]:
    """`protobench compare` of each run against the first (default tolerances; --force, so runs of other
    protocols are compared too, with a note saying what differs)."""
    from protobench.errors import ProtobenchError
    from protobench.report.page import compare_rows
    from protobench.run import compare as cmp

    tables = []
    for run in runs[1:]:
        entry = {"base": runs[0].label, "new": run.label, "rows": [], "notes": [], "error": ""}
        try:
            table, notes = cmp.compare(str(runs[0].dir), str(run.dir), cmp.parse_tolerances([]), force=True)
            entry.update(rows=compare_rows(table), notes=notes)
        except ProtobenchError as err:
            entry["error"] = str(err)
        tables.append(entry)
    return tables


def _render(context: dict[str, Any]) -> str:
    from protobench.report.page import render

    context.setdefault("comparison", None)
    context.setdefault("compare_tables", [])
    return render(context)


def write(out: Path, files: dict[str, bytes], html: str) -> None:
    """Replace an earlier report in `out` by this one: its PNG and CSV files, then report.html last. The
    WRITING mark stays until report.html is in place, so a report interrupted (a full disk, a kill)
    is recognised, and replaced, by its rerun."""
    from protobench.files import atomic_path, atomic_write_text, writing

    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        if (out / REPORT).is_file() or (out / WRITING).is_file():
            for old in [*out.glob("*.png"), *out.glob("*.csv")]:
                old.unlink()
        (out / WRITING).write_text("a protobench report is being written here; its rerun replaces it\n")
    for name, data in files.items():
        with atomic_path(out / name) as tmp:
            Path(tmp).write_bytes(data)
    atomic_write_text(out / REPORT, html)
    (out / WRITING).unlink()
