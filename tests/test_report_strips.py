"""The strips' drawing: the same pictures as matplotlib's own wrapping and contours would draw."""

import numpy as np
import pytest
from matplotlib.path import Path

from protobench.report.figures import figure, png
from protobench.report.strips import LEGEND, LEGEND_STYLE, SIZE, boundary, outline


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
