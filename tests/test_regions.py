"""The protected region against hand-computed boxes and a slow per-pixel implementation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protobench.core.regions import (REGIONS, attackable_pixels, cell_boxes, high_activation_boxes,
                                     percentile_threshold, quantile, select_prototypes)
from protobench.metrics.PLC import high_region
from protobench.regions.box import default_margin
from protobench.regions.tokens import token_region


def test_quantile_matches_numpy_and_torch():
    x = torch.rand(5, 1000)
    for q in (0.0, 0.1, 0.5, 0.9, 0.95, 1.0):
        ours = quantile(x, q)
        assert torch.allclose(ours, torch.quantile(x, q, dim=1), atol=1e-6)
        assert np.allclose(ours.numpy(), np.percentile(x.numpy(), 100 * q, axis=1), atol=1e-6)


def tied_maps(seed, count=40):
    """Upsampled 7 x 7 maps at 224 px whose values repeat exactly: coarse maps rounded to 1/50 (whole
    plateaus of equal pixels) and maps with two cells equal, so the quantile often lands on a tie."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 7, 7, generator=gen) ** 3 * 0.05
    coarse[::2] = torch.round(coarse[::2] * 50) / 50
    coarse[1::2, 0, 3, 3] = coarse[1::2, 0, 3, 4]
    return coarse[:, 0], F.interpolate(coarse, size=(224, 224), mode="bilinear", align_corners=False)[:, 0]


def test_quantile_is_torch_quantile_bit_for_bit_ties_included():
    # the reference's PLC: torch.quantile(map.flatten(), q=0.9), one map at a time, then map > threshold
    coarse, up = tied_maps(0)
    ours = quantile(up.flatten(1), 0.9)
    high = high_region(coarse, 224)
    for i in range(len(up)):
        ref = torch.quantile(up[i].flatten(), 0.9)
        assert ours[i].item() == ref.item(), i
        assert torch.equal(high[i], up[i] > ref), i


def test_a_pixel_on_the_threshold_stays_outside_the_top_region():
    # 0.9-quantile of 0..10 (11 values): rank 9 exactly, threshold 9; the pixel equal to it is not "> 9"
    values = torch.arange(11, dtype=torch.float32).repeat(2, 1)
    assert quantile(values, 0.9).tolist() == [9.0, 9.0]
    assert (values > quantile(values, 0.9)[:, None]).sum(1).tolist() == [1, 1]


def numpy_1_22_percentile(row, q):
    """numpy 1.22's np.percentile(row, 100 q), linear, written out: float64 rank and weight, b - a in the
    row's dtype, the rest promoted to float64 (numpy 2 rounds the result back to float32)."""
    s = np.sort(row)
    rank = q * (len(s) - 1)
    lo = int(np.floor(rank))
    hi = min(lo + 1, len(s) - 1)
    t = rank - lo
    diff = s[hi] - s[lo]  # float32 - float32
    return float(s[hi]) - float(diff) * (1 - t) if t >= 0.5 else float(s[lo]) + float(diff) * t


def test_box_threshold_is_numpy_s_float64_percentile_ties_included():
    _, up = tied_maps(1)
    thr = percentile_threshold(up.flatten(1), 0.95)
    assert thr.dtype == torch.float64
    for i in range(len(up)):
        assert thr[i].item() == numpy_1_22_percentile(up[i].flatten().numpy(), 0.95), i
    # two neighbours one float32 step apart: the float64 threshold lies between them, so the lower one is
    # outside the box; a float32 threshold would round onto it and take it in
    a = np.float32(0.5)
    b = np.nextafter(a, np.float32(1))
    row = torch.tensor([0.0] * 18 + [float(a), float(b)], dtype=torch.float32)  # rank 0.95 * 19 = 18.05
    thr = percentile_threshold(row[None], 0.95)[0].item()
    assert float(a) < thr < float(b)
    assert (row.double() >= thr).tolist() == [False] * 19 + [True]
    # the same on a 4 x 4 map shown at 4 x 4 (bicubic at scale 1 is the identity): rank 0.95 * 15 = 14.25 falls
    # between a at (1, 1) and b at (2, 3); the box holds b alone
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 1, 1], m[0, 0, 2, 3] = float(a), float(b)
    assert high_activation_boxes(m, 4).tolist() == [[[2, 3, 3, 4]]]


def test_box_by_hand_without_upsampling():
    # 20x20 map shown at 20x20 (bicubic at scale 1 is the identity); a 5x5 block of ones
    # is 25 pixels > 5% of 400, so the 95th percentile is 1 and the box is the block.
    m = torch.zeros(1, 1, 20, 20)
    m[0, 0, 5:10, 10:15] = 1.0
    assert high_activation_boxes(m, 20).tolist() == [[[5, 10, 10, 15]]]
    attackable = attackable_pixels(m, torch.tensor([[True]]), size=20, margin=2)
    expected = torch.ones(20, 20, dtype=torch.bool)
    expected[3:12, 8:17] = False  # rows 5-2 .. 10+2 (exclusive), cols 10-2 .. 15+2
    assert torch.equal(attackable[0, 0], expected)


def test_box_end_is_clamped_so_last_row_and_column_stay_attackable():
    m = torch.zeros(1, 1, 20, 20)
    m[0, 0, 15:20, 15:20] = 1.0
    attackable = attackable_pixels(m, torch.tensor([[True]]), size=20, margin=2)
    expected = torch.ones(20, 20, dtype=torch.bool)
    expected[13:19, 13:19] = False  # end clamped to S - 1 = 19, exclusive, as the reference
    assert torch.equal(attackable[0, 0], expected)


def slow_attackable_pixels(maps, valid, size, margin):
    """One image and one prototype at a time, pixel by pixel, like the reference code."""
    b, k = maps.shape[:2]
    attackable = np.ones((b, 1, size, size), dtype=bool)
    for i in range(b):
        for j in range(k):
            if not valid[i, j]:
                continue
            up = F.interpolate(maps[i, j][None, None], size=(size, size), mode="bicubic")[0, 0].numpy()
            thr = np.percentile(up, 95)
            hot = up >= thr
            rows = [r for r in range(size) if hot[r].max()]
            cols = [c for c in range(size) if hot[:, c].max()]
            y0, y1 = rows[0], rows[-1] + 1
            x0, x1 = cols[0], cols[-1] + 1
            for r in range(max(y0 - margin, 0), min(y1 + margin, size - 1)):
                for c in range(max(x0 - margin, 0), min(x1 + margin, size - 1)):
                    attackable[i, 0, r, c] = False
    return attackable


def test_attackable_pixels_matches_slow_implementation():
    torch.manual_seed(3)
    maps = torch.rand(4, 3, 7, 7) ** 3  # peaky maps, several prototypes per image
    valid = torch.tensor([[True, False, False], [True, True, False], [True, True, True], [False, True, False]])
    fast = attackable_pixels(maps, valid, size=56, margin=3)
    slow = slow_attackable_pixels(maps, valid, size=56, margin=3)
    assert np.array_equal(fast.numpy(), slow)


def test_no_valid_prototype_protects_nothing():
    attackable = attackable_pixels(torch.rand(1, 2, 7, 7), torch.tensor([[False, False]]), size=28, margin=2)
    assert attackable.all()


def test_default_margin_is_10px_at_224_and_scales():
    assert default_margin(224) == 10
    assert default_margin(64) == 3
    assert default_margin(448) == 20


def test_select_top_proto_and_gt_protos():
    act = torch.tensor([[0.1, 0.9, 0.3, 0.5], [0.8, 0.2, 0.7, 0.1]])
    in_class = torch.tensor([[False, False, True, True], [True, True, False, False]])
    attacked, p_star = select_prototypes(act, in_class, "top-proto")
    assert p_star.tolist() == [1, 0]
    assert attacked.tolist() == [[False, True, False, False], [True, False, False, False]]
    attacked, p_star = select_prototypes(act, in_class, "gt-protos")
    assert p_star.tolist() == [3, 0]  # most active own-class prototype
    assert attacked.tolist() == in_class.tolist()


def test_select_rejects_unknown_mode():
    with pytest.raises(ValueError, match="top-proto"):
        select_prototypes(torch.rand(1, 2), torch.ones(1, 2, dtype=torch.bool), "best")


# ---------------------------------------------------------------- --region tokens (ProtoViT's benchmark copy)


def test_token_region_by_hand_at_16_px_per_token():
    # a 14 x 14 grid at 224 px: token 31 is row 2, column 3, pixels [32, 48) x [48, 64); ProtoViT's copy
    # zeroes mask[32 : 48 - 1, 48 : 64 - 1], so the token's last row (47) and column (63) stay attackable
    maps = torch.rand(1, 1, 14, 14)
    cells = torch.tensor([[[31, 32, 45, 195]]])  # (B, K=1, J=4): 32 is its right neighbour, 195 the last token
    attackable = REGIONS.get("tokens").attackable(maps, cells, torch.tensor([[True]]), size=224, margin=0)
    expected = torch.ones(224, 224, dtype=torch.bool)
    for r, c in ((2, 3), (2, 4), (3, 3), (13, 13)):
        expected[16 * r:16 * r + 15, 16 * c:16 * c + 15] = False
    assert torch.equal(attackable[0, 0], expected)
    assert (~attackable).sum() == 4 * 15 * 15
    assert attackable[0, 0, 47, 50] and attackable[0, 0, 40, 63]  # the seam between two adjacent tokens


def test_token_region_margin_grows_each_box_and_grids_need_not_divide_the_image():
    # 3 x 3 cells on 32 px: cell 4 (row 1, col 1) covers [10, 21) (floor(32/3) = 10, floor(64/3) = 21)
    maps = torch.rand(1, 2, 3, 3)
    cells = torch.tensor([[[4], [0]]])
    attackable = token_region(maps, cells, torch.tensor([[True, False]]), size=32, margin=2)
    expected = torch.ones(32, 32, dtype=torch.bool)
    expected[8:22, 8:22] = False  # [10 - 2, 21 - 1 + 2); prototype 1 is padding and protects nothing
    assert torch.equal(attackable[0, 0], expected)
    assert [int(v) for v in cell_boxes(torch.tensor(8), (3, 3), 32)] == [21, 32, 21, 32]


def test_regions_are_a_registry_with_their_own_default_margin():
    assert {"box", "tokens"} <= set(REGIONS.names())
    assert REGIONS.get("box").margin(224) == 10 and REGIONS.get("tokens").margin(224) == 0
    maps = torch.zeros(1, 1, 20, 20)
    maps[0, 0, 5:10, 10:15] = 1.0  # the box region is attackable_pixels, whatever the cells say
    box = REGIONS.get("box").attackable(maps, torch.tensor([[[0]]]), torch.tensor([[True]]), size=20, margin=2)
    assert torch.equal(box, attackable_pixels(maps, torch.tensor([[True]]), size=20, margin=2))
