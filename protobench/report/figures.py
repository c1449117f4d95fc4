"""The report's charts, drawn with matplotlib's Agg canvas (no display, no pyplot state): histograms of
the per-image metrics and the comparison of several runs. Every figure becomes PNG bytes.

Colours: the Okabe-Ito palette (told apart with any colour vision), and each series also has its own
line style, so the charts survive printing in grey.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from protobench.report.runs import Run

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
STYLES = ("-", "--", ":", "-.")
DPI = 100
SENSITIVITY_AXES = {"eps": "eps (L-inf radius)", "steps": "steps (of 0.01)", "box_quantile": "box quantile",
                    "margin": "margin (px)", "plc_quantile": "PLC quantile"}  # the sensitivity grid's axes, named
HISTOGRAMS = (("PAC", "PAC: activation change (%)"), ("PLC", "PLC: location change (%)"),
              ("PRC", "PRC: rank change (prototypes)"))


def figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A new figure on an Agg canvas (matplotlib's own; no GUI backend is ever loaded). `layout`: None
    for a figure that places its own axes (constrained layout costs most of a small figure's drawing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    fig.set_facecolor("white")
    return fig


def png(fig: Figure) -> bytes:
    """The figure as full-colour PNG bytes (a palette would band the heatmaps and the attacked pixels).

    Drawn once on the Agg canvas and encoded with Pillow: savefig would lay out and draw it again."""
    from PIL import Image

    fig.canvas.draw()
    width, height = fig.canvas.get_width_height(physical=True)
    rgb = Image.frombuffer("RGBA", (width, height), fig.canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def style(i: int) -> str:
    return STYLES[i % len(STYLES)]


def values(run: Run, metric: str) -> np.ndarray:
    column = np.asarray(run.per_image[metric], dtype=float)
    return column[np.isfinite(column)]


def bins(metric: str, data: Sequence[np.ndarray]) -> np.ndarray:
    """Shared bin edges for every series: whole numbers for PRC (a count), up to 40 bins otherwise."""
    joined = np.concatenate([d for d in data if len(d)]) if any(len(d) for d in data) else np.zeros(1)
    low, high = float(joined.min()), float(joined.max())
    if metric == "PRC" and high - low <= 60:
        return np.arange(math.floor(low) - 0.5, math.ceil(high) + 1.5)
    if high - low < 1e-9:
        return np.array([low - 0.5, high + 0.5])
    return np.histogram_bin_edges(joined, bins=min(40, max(10, int(math.sqrt(len(joined))))))


def histograms(runs: Sequence[Run], title: str) -> bytes:
    """One panel per metric (PAC, PLC, PRC); each run one outlined histogram with its mean as a
    vertical line, overlaid on shared bins (e.g. a pgd run and a reference run of one model). Runs of
    different sizes are drawn as shares of their images (%), so that their shapes compare."""
    fig = figure(12, 3.4 + 0.25 * ((len(runs) + 2) // 3))
    axes = fig.subplots(1, len(HISTOGRAMS))
    for ax, (metric, label) in zip(axes, HISTOGRAMS):
        data = [values(run, metric) for run in runs]
        shares = len({len(d) for d in data if len(d)}) > 1
        edges = bins(metric, data)
        for i, (run, d) in enumerate(zip(runs, data)):
            if not len(d):
                continue
            ax.hist(d, bins=edges, histtype="step", linewidth=2, color=color(i), linestyle=style(i),
                    weights=np.full(len(d), 100 / len(d)) if shares else None, label=f"{run.label} (n={len(d)})")
            ax.axvline(float(d.mean()), color=color(i), linestyle=style(i), linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("share of images (%)" if shares else "images")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=9, frameon=False)
    fig.suptitle(f"{title} (vertical lines: means)", fontsize=11)
    return png(fig)


def comparison(runs: Sequence[Run]) -> bytes:
    """Several runs side by side: each measured per-image metric's mean with its 95% CI (one panel per
    metric; a metric no run has is left out, so no panel is empty), and accuracy on clean and attacked
    images; at most three panels a row, so the chart fits the page at its own size."""
    from protobench.core.metrics import measured
    from protobench.report.runs import finite

    metrics = [spec for spec in measured([run.summary for run in runs]) if spec.summary is None
               and any(not math.isnan(finite(run.summary.get(spec.column))) for run in runs)]
    panels = len(metrics) + 1
    cols = 2 if panels == 4 else min(panels, 3)
    rows = -(-panels // cols)
    fig = figure(4.3 * cols, rows * (1.3 + 0.45 * len(runs)) + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).flatten())
    y = np.arange(len(runs))[::-1]
    for ax, spec in zip(axes, metrics):
        for i, run in enumerate(runs):
            mean = finite(run.summary.get(f"{spec.name}_mean"))
            low = finite(run.summary.get(f"{spec.name}_ci_low"))
            high = finite(run.summary.get(f"{spec.name}_ci_high"))
            err = [[max(mean - low, 0)], [max(high - mean, 0)]] if not math.isnan(low + high) else None
            ax.errorbar([mean], [y[i]], xerr=err, fmt="o", color=color(i), capsize=4, markersize=6)
        ax.set_xlabel(f"{spec.name} ({spec.unit}), mean and 95% CI")
        ax.grid(alpha=0.3, axis="x")
        low, high = ax.dataLim.intervalx
        if high - low < 1e-9:  # every run the same value (e.g. PRC 0): a readable unit-wide axis around it
            ax.set_xlim(low - 1, high + 1)
    accuracy_panel(axes[len(metrics)], runs, y)
    for k, ax in enumerate(axes):
        if k > len(metrics):
            ax.axis("off")
            continue
        ax.set_ylim(-0.6, len(runs) - 0.4)
        ax.set_yticks(y, [run.label for run in runs] if k % cols == 0 else [])
    fig.suptitle("models and runs compared (lower PLC, PAC, PRC: better aligned)", fontsize=11)
    return png(fig)


def accuracy_panel(ax: Any, runs: Sequence[Run], y: np.ndarray) -> None:
    from protobench.report.runs import finite

    for i, run in enumerate(runs):
        before, after = finite(run.summary.get("acc_before")), finite(run.summary.get("acc_after"))
        ax.plot([after, before], [y[i], y[i]], color=color(i), linewidth=1.5)
        ax.plot([before], [y[i]], "o", color=color(i), markersize=6)
        ax.plot([after], [y[i]], "x", color=color(i), markersize=8, markeredgewidth=2)
    ax.set_xlabel("accuracy (%): o clean, x attacked")
    ax.grid(alpha=0.3, axis="x")


CONVERGENCE = (("objective_mean", "mean objective (attacked activation)"), ("PAC_mean", "mean PAC (%)"),
               ("improving_share", "share of images still improving"))


def convergence(runs: Sequence[Run]) -> bytes | None:
    """The attack's convergence (each run's convergence.csv): the mean objective, mean PAC and the share
    of images whose best objective still dropped, against the step; one line per run. None when no run
    has the file (runs made before it existed) or every run's attack had no steps (noise)."""
    import pandas as pd

    tables = []
    for run in runs:
        try:
            table = pd.read_csv(run.dir / "convergence.csv")
        except (OSError, ValueError):
            continue
        if {"step", *(c for c, _ in CONVERGENCE)} <= set(table.columns) and len(table) > 1:
            tables.append((run, table))
    if not tables:
        return None
    fig = figure(12, 3.2 + 0.25 * ((len(tables) + 2) // 3))
    axes = fig.subplots(1, len(CONVERGENCE))
    for ax, (column, label) in zip(axes, CONVERGENCE):
        for i, (run, table) in enumerate(tables):
            ax.plot(table["step"], table[column], color=color(i), linestyle=style(i), linewidth=2, label=run.label)
        ax.set_xlabel("step (0: random start; last: the images returned)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[2].set_ylim(-0.02, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=9, frameon=False)
    fig.suptitle("how the attack converged: a curve still falling at the last step means a stronger attack "
                 "would find more", fontsize=11)
    return png(fig)


def sensitivity(frame: Any, metric: str) -> bytes:
    """`protobench sensitivity`'s picture of one metric (its sensitivity.csv rows, protobench.run.sensitivity):
    the metric against each axis's settings (a panel per axis), one line per model, 95% intervals."""
    from protobench.core.metrics import METRICS

    data = frame[frame["metric"] == metric]
    label = METRICS.get(metric).label if metric in METRICS else metric
    axes_names = list(dict.fromkeys(data["axis"]))
    cols = min(4, len(axes_names))
    rows = math.ceil(len(axes_names) / cols)
    fig = figure(3.3 * cols, 2.9 * rows + 0.6)
    panels = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, axis in zip(panels, axes_names):
        part = data[data["axis"] == axis]
        settings = list(dict.fromkeys(part["setting"]))
        groups = list(part.groupby("model", sort=False))
        for i, (model, rows_) in enumerate(groups):
            rows_ = rows_.set_index("setting").loc[settings]
            err = np.abs(np.vstack([rows_["mean"] - rows_["ci_low"], rows_["ci_high"] - rows_["mean"]]))
            shift = 0.06 * (i - (len(groups) - 1) / 2)  # side by side, so that the intervals stay apart
            ax.errorbar(np.arange(len(settings)) + shift, rows_["mean"], yerr=np.nan_to_num(err), color=color(i),
                        linestyle=style(i), marker="o", capsize=3, label=model)
        defaults = set(part.loc[part["default"], "setting"])
        ax.set_xticks(range(len(settings)), [f"{s.removesuffix(' (default)')}*" if s in defaults else s
                                             for s in settings])
        ax.set_xlabel(SENSITIVITY_AXES.get(axis, axis))
        ax.grid(alpha=0.3)
    for ax in panels[::cols]:
        ax.set_ylabel(label, fontsize=9)
    for ax in panels[len(axes_names):]:
        ax.set_visible(False)
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    fig.suptitle(f"{label} against each setting of the benchmark, one at a time (* the default; bars: 95% "
                 "interval)",
                 fontsize=11)
    return png(fig)
