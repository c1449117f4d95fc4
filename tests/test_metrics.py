"""PAC / PRC / PLC and prototype selection against values worked out by hand."""

import math

import pytest
import torch

from protobench.core import metrics


def test_pac_by_hand_including_negative():
    before = torch.tensor([2.0, 1.0, 4.0])
    after = torch.tensor([1.5, 1.2, 0.0])
    assert metrics.pac(before, after).tolist() == pytest.approx([25.0, -20.0, 100.0])


def test_pac_of_zero_activation_is_nan():
    assert math.isnan(metrics.pac(torch.tensor([0.0]), torch.tensor([0.0])).item())


def test_prc_counts_other_class_prototypes_that_overtake():
    # 5 prototypes; image's class owns prototypes 0 and 1; p* = 0.
    in_class = torch.tensor([[True, True, False, False, False]])
    before = torch.tensor([[5.0, 6.0, 1.0, 2.0, 7.0]])  # other-class above p*: {4} -> 1
    after = torch.tensor([[1.5, 9.0, 1.0, 2.0, 7.0]])  # other-class above p*: {3, 4} (1.0 is not > 1.5) -> 2
    assert metrics.prc(before, after, torch.tensor([0]), in_class).tolist() == [1]
    # an own-class prototype overtaking does not count
    after_own = torch.tensor([[5.0, 99.0, 1.0, 2.0, 7.0]])
    assert metrics.prc(before, after_own, torch.tensor([0]), in_class).tolist() == [0]


def test_plc_by_hand_without_upsampling():
    # 10x10 maps shown at 10x10: no interpolation, the top 10 pixels are those > quantile 0.9
    values = torch.arange(100, dtype=torch.float32)
    before = values.view(1, 10, 10)  # top-10 = row 9
    after = values.clone()
    after[90:95] = -1.0  # half of row 9 drops out ...
    after[80:85] = 200.0  # ... and half of row 8 becomes the hottest
    after = after.view(1, 10, 10)
    # after: top-10 = 80..84 (200) + 95..99 -> intersection 5, union 15
    assert metrics.plc(before, after, 10).item() == pytest.approx(100 * (1 - 5 / 15))


def test_plc_identical_maps_is_zero_and_empty_union_is_zero():
    m = torch.rand(2, 7, 7)
    assert metrics.plc(m, m, 28).tolist() == [0.0, 0.0]
    flat = torch.ones(1, 7, 7)  # nothing strictly above the quantile: empty union
    assert metrics.plc(flat, 2 * flat, 28).tolist() == [0.0]


def test_plc_matches_slow_reference_formula():
    torch.manual_seed(1)
    before, after = torch.rand(4, 7, 7), torch.rand(4, 7, 7)
    fast = metrics.plc(before, after, 56)
    for i in range(4):  # the reference's one-image code: torch.quantile + set arithmetic
        up_b = torch.nn.functional.interpolate(before[i][None, None], size=(56, 56), mode="bilinear")[0, 0]
        up_a = torch.nn.functional.interpolate(after[i][None, None], size=(56, 56), mode="bilinear")[0, 0]
        hb, ha = up_b > torch.quantile(up_b.flatten(), 0.9), up_a > torch.quantile(up_a.flatten(), 0.9)
        iou = (hb & ha).sum().item() / (hb | ha).sum().item()
        assert fast[i].item() == pytest.approx(100 * (1 - iou), abs=1e-4)
