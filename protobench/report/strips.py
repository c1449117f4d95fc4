"""One strip per drawn image: what the attack changed and how far the explanation moved.

    prototype's source patch | clean image    | heatmap before
    perturbation             | attacked image | heatmap after

The numbers are in the page's text beside the strip (report.story).

The heatmap is p*'s similarity map upsampled to the image (bilinear, as PLC does), over the
greyed image; its top-10% region (the pixels PLC compares: strictly above the 90th percentile)
is outlined. Both heatmaps share one colour scale (the clean map's maximum), so a weaker
activation after the attack looks weaker. The protected region (copied bit for bit) is dashed.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from protobench.report.figures import figure, png

HEATMAP, DIVERGING = "viridis", "PuOr"  # perceptually uniform; colour-blind safe diverging (ColorBrewer)
REGION, BEFORE, PROTECTED, PATCH = "#FFFFFF", "#F0E442", "#E69F00", "#56B4E9"  # outlines (Okabe-Ito)
# Where the panels go, in figure fractions: square panels in three columns and two rows, with room for
# the titles above them, the colour bars right of the third and first columns, and the legend below.
COLUMNS, ROWS, SIDE = (0.01, 0.375, 0.70), (0.55, 0.125), (0.25, 0.344)
SIZE = (8.4, 6.1)  # inches, at figures.DPI
# The legend is broken where matplotlib's wrap=True breaks it at the strip's width, which measures every
# word at every draw (tests/test_report_strips.py checks that the breaks are still the same).
LEGEND_STYLE = {"fontsize": 7.5, "color": "#333333", "ha": "center", "va": "bottom"}
LEGEND = ("Top left: the prototype's source patch (blue box). White line: the heatmap's top-10% region (what PLC "
          "compares); dotted yellow: that region before the attack; dashed\norange: the protected region (never "
          "attacked). Both heatmaps share the clean one's colour scale: a collapsed map turns dark and flat.")


def pixels_of(image: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, S, S) normalized tensor -> (S, S, 3) float array in [0, 1]."""
    values = image.float().numpy().transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return np.clip(values, 0.0, 1.0)


def upsampled(maps: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(2, h, w) maps -> their bilinear upsampling (2, S, S) and top-10% regions (2, S, S) bool,
    exactly as PLC computes them (protobench.metrics.PLC.high_region)."""
    import torch.nn.functional as F

    from protobench.metrics.PLC import high_region

    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return up.numpy(), high_region(maps, size, 0.9).numpy()


def outline(ax: Any, mask: np.ndarray, colour: str, style: str, width: float = 1.6) -> None:
    if mask.any() and not mask.all():
        ax.add_collection(boundary(mask, colour, style, width), autolim=False)


def boundary(mask: np.ndarray, colour: str, style: str, width: float) -> Any:
    """The (S, S) bool mask's outline as `ax.contour(mask, levels=[0.5])` draws it: the line through the
    midpoints between its pixels' centres, from the same contour generator and default settings, in one
    collection of the same style, without the cost of a ContourSet (levels, colour maps, autoscaling)."""
    import contourpy
    from matplotlib.collections import PathCollection
    from matplotlib.path import Path

    lines = contourpy.contour_generator(z=mask.astype(float), name="mpl2014", corner_mask=True,
                                        line_type=contourpy.LineType.SeparateCode).lines(0.5)
    path = Path(np.concatenate(lines[0]), np.concatenate(lines[1]))
    return PathCollection([path], facecolors="none", edgecolors=[colour], linewidths=[width], linestyles=[style],
                          zorder=2)


class Canvas:
    """A strip's figure with its six panels and three colour bars, drawn again for each strip of a run: making
    nine Axes and three colour bars for every strip took a third of its time. Each strip starts by removing
    what the last one added, so that it draws what a new figure would (tests/test_report_strips.py compares
    the two)."""

    def __init__(self) -> None:
        self.fig = figure(*SIZE, layout=None)
        self.axes = [self.fig.add_axes((left, bottom, *SIDE)) for bottom in ROWS for left in COLUMNS]
        band, bottom = legend_band()
        self.fig.figimage(band, yo=bottom, origin="upper", zorder=-1)
        self.bars: dict[Any, Any] = {}  # panel -> its colour bar, made with the first image it shows

    def clear(self, heading: str) -> list[Any]:
        """The panels, emptied, under the strip's `heading`."""
        self.fig.suptitle(heading, fontsize=10, parse_math=False, y=0.985, va="top")
        for ax in self.axes:
            for artist in [*ax.images, *ax.collections, *ax.patches, *ax.texts, *ax.lines, *ax.artists]:
                artist.remove()
            ax.set_title("")
            ax.set_axis_on()
        return self.axes

    def colorbar(self, shown: Any, ax: Any) -> Any:
        """A colour bar just right of panel `ax`, as tall as it, for the image `shown`."""
        bar = self.bars.get(ax)
        if bar is not None:
            bar.update_normal(shown)
            return bar
        left, bottom, width, height = ax.get_position().bounds
        bar = self.fig.colorbar(shown, cax=self.fig.add_axes((left + width + 0.008, bottom, 0.015, height)))
        bar.ax.tick_params(labelsize=7)
        self.bars[ax] = bar
        return bar


@functools.lru_cache(maxsize=1)
def legend_band() -> tuple[np.ndarray, int]:
    """The legend as drawn at the bottom of a strip: the rows of pixels it covers (RGBA, full width) and
    the height of the lowest one above the figure's bottom edge. Drawing its 300 letters took a sixth of
    a strip's time; it is the same in every strip, so it is drawn once and placed as pixels (nothing else
    is drawn in its rows)."""
    fig = figure(*SIZE, layout=None)
    text = fig.text(0.5, 0.012, LEGEND, **LEGEND_STYLE)
    fig.canvas.draw()
    rgba = np.array(fig.canvas.buffer_rgba())
    box = text.get_window_extent()  # in pixels from the bottom left
    rows = rgba.shape[0]
    top, bottom = max(rows - math.ceil(box.y1) - 2, 0), min(rows - math.floor(box.y0) + 2, rows)
    band = rgba[top:bottom]
    band.flags.writeable = False  # shared by every canvas
    return band, rows - bottom


def panel(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=9, parse_math=False)
    ax.set_xticks([])
    ax.set_yticks([])


def strip(pixels: Any, row: int, numbers: dict[str, Any], heading: str, source: Any = None,
          canvas: Canvas | None = None) -> bytes:
    """The strip of image `row` of `pixels` (report.pixels.Pixels); `numbers`: its per_image.csv row;
    `source`: p*'s source patch (gallery.Patch) or None; `canvas`: the figure to draw on again (a new one
    by default). Two rows of three panels, so that the strip stays readable on a narrow screen; the
    numbers are in the page's text beside it."""
    size = pixels.images.shape[-1]
    clean = pixels_of(pixels.images[row], pixels.mean, pixels.std)
    attacked = pixels_of(pixels.images_adv[row], pixels.mean, pixels.std)
    maps, regions = upsampled(_pair(pixels, row), size)
    protected = ~pixels.attackable[row, 0].numpy()
    canvas = canvas or Canvas()
    axes = canvas.clear(heading)
    show = {"interpolation": "nearest" if size < 160 else "antialiased"}
    source_panel(axes[0], source, numbers, show)
    axes[1].imshow(clean, **show)
    outline(axes[1], protected, PROTECTED, "--")
    panel(axes[1], f"clean image {int(numbers['index'])}")
    top = float(maps[0].max()) or 1.0
    for ax, i, image, name in ((axes[2], 0, clean, "heatmap, clean"), (axes[5], 1, attacked, attacked_title(numbers))):
        ax.imshow(image.mean(axis=2), cmap="gray", vmin=0, vmax=1, **show)
        shown = ax.imshow(maps[i], cmap=HEATMAP, vmin=0, vmax=top, alpha=0.6, interpolation="bilinear")
        outline(ax, regions[i], REGION, "-")
        if i == 1:
            outline(ax, regions[0], BEFORE, ":")
        outline(ax, protected, PROTECTED, "--", 1.0)
        panel(ax, f"{name}\nprototype {int(numbers['proto'])}")
        canvas.colorbar(shown, ax)
    perturbation_panel(canvas, axes[3], pixels, row, protected, show)
    axes[4].imshow(attacked, **show)
    outline(axes[4], protected, PROTECTED, "--")
    panel(axes[4], "attacked image")
    return png(canvas.fig)


def attacked_title(numbers: dict[str, Any]) -> str:
    """What happened to the map, in two words: a flattened map is no move."""
    if _true(numbers.get("collapsed")):
        return f"heatmap, attacked: COLLAPSED, PLC {float(numbers['PLC']):.0f}%"
    return f"heatmap, attacked: PLC {float(numbers['PLC']):.0f}%"


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0")


def source_panel(ax: Any, source: Any, numbers: dict[str, Any], show: dict) -> None:
    """p*'s source patch: the image it is most active on (training data, or the evaluated data), the
    patch boxed; an empty panel that says why where there is none."""
    if source is None:
        ax.axis("off")
        ax.text(0.5, 0.5, f"prototype {int(numbers['proto'])}:\nsource patch\nnot available", ha="center",
                va="center", fontsize=9, transform=ax.transAxes)
        return
    ax.imshow(source.pixels, **show)
    top, bottom, left, right = source.box
    ax.add_patch(_rectangle(left - 0.5, top - 0.5, right - left, bottom - top))
    panel(ax, f"prototype {int(numbers['proto'])}: {source.short}")


def _rectangle(x: float, y: float, w: float, h: float) -> Any:
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    box = Rectangle((x, y), w, h, fill=False, edgecolor=PATCH, linewidth=2)
    box.set_path_effects([patheffects.withStroke(linewidth=4.5, foreground="black")])  # seen on any image
    return box


def _pair(pixels: Any, row: int) -> Any:
    import torch

    return torch.stack([pixels.map_star[row], pixels.map_star_adv[row]])


def perturbation_panel(canvas: Canvas, ax: Any, pixels: Any, row: int, protected: np.ndarray, show: dict) -> None:
    """x' - x in pixel units (0-1 scale, mean over R, G, B), its colour scale stretched to its largest
    change so that small perturbations show."""
    change = (pixels.images_adv[row] - pixels.images[row]).float().numpy() * np.asarray(pixels.std)[:, None, None]
    change = change.mean(axis=0)
    scale = float(np.abs(change).max()) or 1e-6
    shown = ax.imshow(change, cmap=DIVERGING, vmin=-scale, vmax=scale, **show)
    outline(ax, protected, "#000000", "--")
    panel(ax, f"perturbation, shown x{1 / scale:.0f}")
    bar = canvas.colorbar(shown, ax)
    bar.set_label("pixel change (0-1)", fontsize=7)


def class_name(k: int, classes: list[str]) -> str:
    """'3 (bird)'; '5-blue-vertical' where the name already starts with the number; '3' without names."""
    if not 0 <= k < len(classes):
        return str(k)
    return classes[k] if classes[k].startswith(f"{k}-") else f"{k} ({classes[k]})"
