"""One strip per drawn image: what the attack changed and how far the explanation moved.

    clean image | heatmap before | perturbation | attacked image | heatmap after | the numbers

The heatmap is p*'s similarity map upsampled to the image (bilinear, as PLC does), over the
greyed image; its top-10% region (the pixels PLC compares: strictly above the 90th percentile)
is outlined. Both heatmaps share one colour scale (the clean map's maximum), so a weaker
activation after the attack looks weaker. The protected region (copied bit for bit) is dashed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protobench.report.figures import figure, png

NAME_WIDTH = 26  # characters of a class name in the numbers panel
HEATMAP, DIVERGING = "viridis", "PuOr"  # perceptually uniform; colour-blind safe diverging (ColorBrewer)
REGION, BEFORE, PROTECTED = "#FFFFFF", "#F0E442", "#E69F00"  # outline colours (Okabe-Ito yellow, orange)
LEGEND = ("white line: the heatmap's top-10% region (what PLC compares); dotted yellow: that region before the "
          "attack; dashed: the protected region (never attacked). Both heatmaps share the clean one's colour scale.")


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
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linestyles=[style], linewidths=[width])


def panel(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=9, parse_math=False)
    ax.set_xticks([])
    ax.set_yticks([])


def strip(pixels: Any, row: int, numbers: dict[str, Any], heading: str) -> bytes:
    """The strip of image `row` of `pixels` (report.pixels.Pixels); `numbers`: its per_image.csv row."""
    size = pixels.images.shape[-1]
    clean = pixels_of(pixels.images[row], pixels.mean, pixels.std)
    attacked = pixels_of(pixels.images_adv[row], pixels.mean, pixels.std)
    maps, regions = upsampled(_pair(pixels, row), size)
    protected = ~pixels.attackable[row, 0].numpy()
    fig = figure(13.2, 2.95)
    axes = fig.subplots(1, 6, width_ratios=[1, 1.2, 1.2, 1, 1.2, 1.15])
    fig.suptitle(heading, fontsize=10, parse_math=False)
    fig.supxlabel(LEGEND, fontsize=7.5, color="#333333")
    show = {"interpolation": "nearest" if size < 160 else "antialiased"}
    axes[0].imshow(clean, **show)
    outline(axes[0], protected, PROTECTED, "--")
    panel(axes[0], "clean image")
    grey = clean.mean(axis=2)
    top = float(maps[0].max()) or 1.0
    for ax, i, image_grey, name in ((axes[1], 0, grey, "heatmap, clean"),
                                    (axes[4], 1, attacked.mean(axis=2), "heatmap, attacked")):
        ax.imshow(image_grey, cmap="gray", vmin=0, vmax=1, **show)
        shown = ax.imshow(maps[i], cmap=HEATMAP, vmin=0, vmax=top, alpha=0.6, interpolation="bilinear")
        outline(ax, regions[i], REGION, "-")
        if i == 1:
            outline(ax, regions[0], BEFORE, ":")
        outline(ax, protected, PROTECTED, "--", 1.0)
        panel(ax, f"{name}: prototype {int(numbers['proto'])}")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    perturbation_panel(fig, axes[2], pixels, row, protected, show)
    axes[3].imshow(attacked, **show)
    outline(axes[3], protected, PROTECTED, "--")
    panel(axes[3], "attacked image")
    numbers_panel(axes[5], numbers, pixels.classes)
    return png(fig)


def _pair(pixels: Any, row: int) -> Any:
    import torch

    return torch.stack([pixels.map_star[row], pixels.map_star_adv[row]])


def perturbation_panel(fig: Any, ax: Any, pixels: Any, row: int, protected: np.ndarray, show: dict) -> None:
    """x' - x in pixel units (0-1 scale, mean over R, G, B), its colour scale stretched to its largest
    change so that small perturbations show."""
    change = (pixels.images_adv[row] - pixels.images[row]).float().numpy() * np.asarray(pixels.std)[:, None, None]
    change = change.mean(axis=0)
    scale = float(np.abs(change).max()) or 1e-6
    shown = ax.imshow(change, cmap=DIVERGING, vmin=-scale, vmax=scale, **show)
    outline(ax, protected, "#000000", "--")
    panel(ax, f"perturbation, shown x{1 / scale:.0f}")
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=7)
    bar.set_label("pixel change (0-1)", fontsize=7)


def numbers_panel(ax: Any, numbers: dict[str, Any], classes: list[str]) -> None:
    def name(label: Any) -> str:  # cut: a long class name would run off the strip (one column of ~30 characters)
        text = class_name(int(label), classes)
        return text if len(text) <= NAME_WIDTH else text[:NAME_WIDTH - 3] + "..."

    lines = [
        f"image {int(numbers['index'])}",
        f"  class {name(numbers['label'])}",
        f"prototype {int(numbers['proto'])}",
        f"  of class {name(numbers['proto_class'])}",
        f"activation {float(numbers['act_before']):.3g} -> {float(numbers['act_after']):.3g}",
        f"PAC {float(numbers['PAC']):.1f} %   PLC {float(numbers['PLC']):.1f} %",
        f"PRC {int(numbers['PRC']):+d}",
        "prediction",
        f"  {name(numbers['pred_before'])}",
        f"  -> {name(numbers['pred_after'])}",
    ]
    ax.axis("off")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=9, family="monospace",
            transform=ax.transAxes, parse_math=False, linespacing=1.35)


def class_name(k: int, classes: list[str]) -> str:
    """'3 (bird)'; '5-blue-vertical' where the name already starts with the number; '3' without names."""
    if not 0 <= k < len(classes):
        return str(k)
    return classes[k] if classes[k].startswith(f"{k}-") else f"{k} ({classes[k]})"
