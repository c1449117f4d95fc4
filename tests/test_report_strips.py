"""The strips' drawing: the same pictures as matplotlib's own wrapping and contours would draw."""

import numpy as np
import pytest
import torch
from matplotlib.path import Path

from protobench.report.figures import figure, png
from protobench.report.gallery import Patch
from protobench.report.pixels import Pixels
from protobench.report.strips import LEGEND, LEGEND_STYLE, SIZE, Canvas, boundary, outline, strip


def test_the_legend_breaks_where_matplotlib_wraps_it():
    wrapped, broken = figure(*SIZE, layout=None), figure(*SIZE, layout=None)
    wrapped.text(0.5, 0.012, LEGEND.replace("\n", " "), wrap=True, **LEGEND_STYLE)
    broken.text(0.5, 0.012, LEGEND, **LEGEND_STYLE)
    assert "\n" in LEGEND and png(wrapped) == png(broken)


def test_an_outline_runs_through_the_midpoints_between_pixel_centres():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True  # a 2 x 2 block: the level-0.5 line cuts its corners
    (path,) = boundary(mask, "#FFFFFF", "-", 1.6).get_paths()
    corners = {(1, 0.5), (2, 0.5), (2.5, 1), (2.5, 2), (2, 2.5), (1, 2.5), (0.5, 2), (0.5, 1)}  # (x, y)
    assert {tuple(v) for v in path.vertices.tolist()} == corners
    assert path.codes[0] == Path.MOVETO and path.codes[-1] == Path.CLOSEPOLY


MASKS = {
    "block at the border": np.pad(np.ones((6, 9), bool), ((0, 10), (3, 4))),
    "ring with a hole": np.pad(np.pad(np.zeros((3, 3), bool), 3, constant_values=True), 2),
    "two blobs touching at a corner": np.kron(np.eye(2, dtype=bool), np.ones((4, 4), bool)),
}


@pytest.mark.parametrize("name", MASKS)
@pytest.mark.parametrize("style", ["-", ":", "--"])
def test_an_outline_draws_what_matplotlib_s_contour_draws(name, style):
    mask = MASKS[name]
    pictures = []
    for draw in (lambda ax: ax.contour(mask.astype(float), levels=[0.5], colors=["#E69F00"], linestyles=[style],
                                       linewidths=[1.6]),
                 lambda ax: outline(ax, mask, "#E69F00", style)):
        fig = figure(2, 2, layout=None)
        ax = fig.add_axes((0.1, 0.1, 0.8, 0.8))
        ax.imshow(mask, cmap="gray", interpolation="nearest")
        draw(ax)
        pictures.append(png(fig))
    assert pictures[0] == pictures[1]


def drawn_image(size: int, seed: int, protected: bool) -> Pixels:
    """One image's tensors: noise, an attacked copy, a 4 x 4 map that the attack weakens; `protected`: a
    box left as it was, else the whole image (no change at all: the perturbation's scale is its floor)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, 3, size, size, generator=g)
    attackable = torch.zeros(1, 1, size, size, dtype=torch.bool)
    if protected:
        attackable[:] = True
        attackable[..., size // 4:size // 2, size // 3:size * 2 // 3] = False
    adv = torch.where(attackable, images + 0.05 * torch.randn(images.shape, generator=g), images)
    maps = torch.rand(1, 4, 4, generator=g)
    return Pixels([seed], images, adv, attackable, maps, maps.flip(-1) * 0.3, (0.5,) * 3, (0.25,) * 3)


def with_source() -> tuple:
    return (drawn_image(24, 1, True), 0, {"index": 1, "proto": 2, "PLC": 40.0, "collapsed": False}, "a",
            Patch(2, np.random.default_rng(0).random((24, 24, 3)), (3, 11, 4, 13), "training image 5", "", None))


def test_a_strip_drawn_again_on_one_canvas_is_the_strip_a_new_figure_draws():
    """Each strip clears what the last one drew: its source panel, outlines, colour scales, titles, size."""
    without = (drawn_image(168, 2, False), 0, {"index": 2, "proto": 0, "PLC": 0.0, "collapsed": True}, "b", None)
    canvas = Canvas()
    again = [strip(*case, canvas=canvas) for case in (with_source(), without, with_source())]
    assert again == [strip(*with_source()), strip(*without), strip(*with_source())]
    assert again[0] != again[1]


def test_the_legend_placed_as_pixels_is_the_legend_drawn_as_text():
    canvas = Canvas()
    picture = strip(*with_source(), canvas=canvas)
    (placed,) = canvas.fig.images
    placed.remove()
    canvas.fig.text(0.5, 0.012, LEGEND, **LEGEND_STYLE)
    assert png(canvas.fig) == picture
