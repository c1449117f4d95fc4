"""PAC / PRC / PLC and prototype selection against values worked out by hand."""

import math

import pytest
import torch

from protobench.metrics.PAC import pac
from protobench.metrics.PLC import plc, plc_tokens
from protobench.metrics.PRC import prc


def test_pac_by_hand_including_negative():
    before = torch.tensor([2.0, 1.0, 4.0])
    after = torch.tensor([1.5, 1.2, 0.0])
    assert pac(before, after).tolist() == pytest.approx([25.0, -20.0, 100.0])


def test_pac_of_zero_activation_is_nan():
    assert math.isnan(pac(torch.tensor([0.0]), torch.tensor([0.0])).item())


def test_prc_counts_other_class_prototypes_that_overtake():
    # 5 prototypes; image's class owns prototypes 0 and 1; p* = 0.
    in_class = torch.tensor([[True, True, False, False, False]])
    before = torch.tensor([[5.0, 6.0, 1.0, 2.0, 7.0]])  # other-class above p*: {4} -> 1
    after = torch.tensor([[1.5, 9.0, 1.0, 2.0, 7.0]])  # other-class above p*: {3, 4} (1.0 is not > 1.5) -> 2
    assert prc(before, after, torch.tensor([0]), in_class).tolist() == [1]
    # an own-class prototype overtaking does not count
    after_own = torch.tensor([[5.0, 99.0, 1.0, 2.0, 7.0]])
    assert prc(before, after_own, torch.tensor([0]), in_class).tolist() == [0]


def test_plc_by_hand_without_upsampling():
    # 10x10 maps shown at 10x10: no interpolation, the top 10 pixels are those > quantile 0.9
    values = torch.arange(100, dtype=torch.float32)
    before = values.view(1, 10, 10)  # top-10 = row 9
    after = values.clone()
    after[90:95] = -1.0  # half of row 9 drops out ...
    after[80:85] = 200.0  # ... and half of row 8 becomes the hottest
    after = after.view(1, 10, 10)
    # after: top-10 = 80..84 (200) + 95..99 -> intersection 5, union 15
    assert plc(before, after, 10).item() == pytest.approx(100 * (1 - 5 / 15))


def test_plc_identical_maps_is_zero_and_empty_union_is_zero():
    m = torch.rand(2, 7, 7)
    assert plc(m, m, 28).tolist() == [0.0, 0.0]
    flat = torch.ones(1, 7, 7)  # nothing strictly above the quantile: empty union
    assert plc(flat, 2 * flat, 28).tolist() == [0.0]


def test_plc_matches_slow_reference_formula():
    torch.manual_seed(1)
    before, after = torch.rand(4, 7, 7), torch.rand(4, 7, 7)
    fast = plc(before, after, 56)
    for i in range(4):  # the reference's one-image code: torch.quantile + set arithmetic
        up_b = torch.nn.functional.interpolate(before[i][None, None], size=(56, 56), mode="bilinear")[0, 0]
        up_a = torch.nn.functional.interpolate(after[i][None, None], size=(56, 56), mode="bilinear")[0, 0]
        hb, ha = up_b > torch.quantile(up_b.flatten(), 0.9), up_a > torch.quantile(up_a.flatten(), 0.9)
        iou = (hb & ha).sum().item() / (hb | ha).sum().item()
        assert fast[i].item() == pytest.approx(100 * (1 - iou), abs=1e-4)


# ---------------------------------------------------------------- --plc tokens (ProtoViT's benchmark copy)


def test_token_plc_by_hand_per_part_on_the_grid_with_its_gate():
    # two parts on a 2 x 5 grid (10 cells): the 0.9-quantile of 0..9 is 8.1, so each part keeps one cell
    part = torch.arange(10, dtype=torch.float32).view(2, 5)
    before = torch.stack([part, part.flip(-1)])[None]  # part 0 keeps cell 9, part 1 keeps cell 5
    after = torch.stack([part, part.flip(-1).roll(1, dims=-1)])[None]  # part 0 still cell 9; part 1 now cell 6
    moved = plc_tokens(before, after, torch.tensor([[9, 5]]), torch.tensor([[9, 6]]))
    assert moved.item() == pytest.approx(100 * (1 - 1 / 3))  # part 0: {9} and {9}; part 1: {5} and {6}: 1 of 3
    # the same maps, but every cell the parts matched before is matched again (by whichever part): 0
    kept = plc_tokens(before, after, torch.tensor([[9, 5]]), torch.tensor([[5, 9]]))
    assert kept.item() == 0.0


def test_token_plc_keeps_ties_at_the_quantile():
    # ">=" as ProtoViT's copy, not the paper's ">": a constant part keeps every cell, so nothing moved
    flat = torch.ones(1, 1, 3, 3)
    assert plc_tokens(flat, flat, torch.tensor([[0]]), torch.tensor([[4]])).item() == 0.0
    peak = torch.zeros(1, 1, 3, 3)
    peak[0, 0, 1, 1] = 1.0  # the 0.9-quantile of eight 0s and one 1 is 0.2: the centre alone
    assert plc_tokens(peak, flat, torch.tensor([[4]]), torch.tensor([[0]])).item() == pytest.approx(
        100 * (1 - 1 / 9))


def test_token_plc_matches_slow_per_image_code():
    """ProtoViT's copy, one image at a time: torch.quantile per (part) column, >=, set comparison of tokens."""
    gen = torch.Generator().manual_seed(4)
    before, after = torch.randn(5, 4, 14, 14, generator=gen), torch.randn(5, 4, 14, 14, generator=gen)
    cells_b = torch.randint(0, 196, (5, 4), generator=gen)
    cells_a = torch.where(torch.tensor([[1], [0], [1], [0], [1]]).bool(), cells_b.flip(-1), cells_b + 1)
    fast = plc_tokens(before, after, cells_b, cells_a)
    for i in range(5):
        hb = [before[i, j].flatten() >= torch.quantile(before[i, j].flatten(), 0.9) for j in range(4)]
        ha = [after[i, j].flatten() >= torch.quantile(after[i, j].flatten(), 0.9) for j in range(4)]
        inter = sum((b & a).sum().item() for b, a in zip(hb, ha))
        union = sum((b | a).sum().item() for b, a in zip(hb, ha))
        lost = sum(1 for t in cells_b[i].tolist() if t not in cells_a[i].tolist())
        expected = 100 * (1 - inter / union) if lost else 0.0
        assert fast[i].item() == pytest.approx(expected, abs=1e-4)
    assert fast[[0, 2, 4]].eq(0).all() and fast[[1, 3]].gt(0).all()
