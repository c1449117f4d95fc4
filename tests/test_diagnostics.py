"""collapsed and top_outside (docs/metrics.md, Reading PLC), on maps worked out by hand."""

import torch

from protobench.run.diagnostics import collapsed, contrast, top_outside


def maps(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_contrast_is_the_peak_above_the_median_cell():
    # cells 0, 0, 0, 4: torch's median of an even count is the lower middle value, 0
    assert contrast(maps([[0.0, 0.0], [0.0, 4.0]])).tolist() == [4.0]
    assert contrast(maps([[1.0, 1.0], [1.0, 1.5]])).tolist() == [0.5]


def test_a_flattened_map_collapsed_a_weakened_or_moved_one_did_not():
    clean = maps([[0.0, 0.0], [0.0, 3.0]])  # contrast 3: collapsed below a third of it, 1
    flat = maps([[1.0, 1.0], [1.0, 1.5]])  # contrast 0.5: collapsed
    weaker = maps([[0.0, 0.0], [0.0, 1.2]])  # contrast 1.2: weaker, same place, not collapsed
    moved = maps([[2.0, 0.0], [0.0, 0.0]])  # contrast 2 elsewhere: a move, not a collapse
    edge = maps([[0.0, 0.0], [0.0, 1.0]])  # exactly a third: not below it
    before = torch.stack([clean] * 4)
    assert collapsed(before, torch.stack([flat, weaker, moved, edge])).tolist() == [True, False, False, False]


def test_a_map_that_was_flat_before_cannot_collapse():
    flat = maps([[2.0, 2.0], [2.0, 2.0]])
    assert collapsed(flat[None], torch.zeros(1, 2, 2)).tolist() == [False]


def test_top_outside_is_the_share_of_the_top_10_percent_the_attack_could_change():
    # a 10 x 10 map on a 10 x 10 image: bilinear upsampling to the same size is the identity.
    # values 0..99 row by row: the 90th percentile is 89.1, so the top region is row 9 (90..99)
    ramp = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    attackable = torch.zeros(4, 1, 10, 10, dtype=torch.bool)
    attackable[1, 0, :, :4] = True  # columns 0-3: 4 of the region's 10 pixels
    attackable[2] = True  # everything
    attackable[3, 0, :9] = True  # rows 0-8 only: none of the region
    got = top_outside(ramp.expand(4, 10, 10), attackable, 10)
    assert got.tolist() == [0.0, 40.0, 100.0, 0.0]


def test_top_outside_of_a_constant_map_is_zero():
    constant = torch.ones(1, 10, 10)
    assert top_outside(constant, torch.ones(1, 1, 10, 10, dtype=torch.bool), 10).tolist() == [0.0]
