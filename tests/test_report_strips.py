"""The strips' drawing: the same pictures as matplotlib's own wrapping and contours would draw."""

from protobench.report.figures import figure, png
from protobench.report.strips import LEGEND, LEGEND_STYLE, SIZE


def test_the_legend_breaks_where_matplotlib_wraps_it():
    wrapped, broken = figure(*SIZE, layout=None), figure(*SIZE, layout=None)
    wrapped.text(0.5, 0.012, LEGEND.replace("\n", " "), wrap=True, **LEGEND_STYLE)
    broken.text(0.5, 0.012, LEGEND, **LEGEND_STYLE)
    assert "\n" in LEGEND and png(wrapped) == png(broken)
