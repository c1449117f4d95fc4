"""Alignment loss and masking augmentation (docs/compensation.md) on hand-built models."""

import pytest
import torch
from torch import nn

from protobench.train.compensation import (activation_masks, adversarial_outside, alignment_loss, masked_distance,
                                     masking_augmentation, pick_class_prototypes)


class PointwiseMaps(nn.Module):
    """Maps at full resolution from a 1x1 conv: each map pixel sees only its own image pixel."""

    def __init__(self, prototypes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, prototypes, 1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


class BlurMaps(PointwiseMaps):
    """The same, after a 5x5 blur: each map pixel also sees its neighbours."""

    def __init__(self, prototypes=4):
        super().__init__(prototypes)
        self.blur = nn.Conv2d(3, 3, 5, padding=2)

    def forward(self, x):
        return torch.sigmoid(self.conv(self.blur(x)))


IDENTITY = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # 4 prototypes, 2 classes


def test_alignment_loss_is_zero_when_maps_see_only_inside_pixels():
    model = PointwiseMaps()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    loss = alignment_loss(model, x, y, IDENTITY, torch.Generator().manual_seed(0))
    assert loss.item() == 0.0


@pytest.mark.parametrize("adversarial", [None, {"eps": 0.4, "steps": 2}])
def test_alignment_loss_is_positive_when_maps_look_outside_and_reaches_the_backbone(adversarial):
    model = BlurMaps()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    loss = alignment_loss(model, x, y, IDENTITY, torch.Generator().manual_seed(0), adversarial=adversarial)
    assert loss.item() > 0
    loss.backward()
    assert model.blur.weight.grad is not None and model.blur.weight.grad.abs().sum() > 0


def test_adversarial_outside_is_worse_than_blanking():
    model = BlurMaps()
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    plain = alignment_loss(model, x, y, IDENTITY, torch.Generator().manual_seed(1))
    adv = alignment_loss(model, x, y, IDENTITY, torch.Generator().manual_seed(1),
                         adversarial={"eps": 2.0, "steps": 3})
    assert adv.item() > plain.item()


def test_masked_distance_by_hand():
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    t = torch.tensor([[[1.5, 2.0], [0.0, 4.0]]])
    m = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])
    assert masked_distance(s, t, m).item() == pytest.approx((0.5 * 1 + 3 * 0.5) / 1.5)
    assert masked_distance(s, t, m, "l2").item() == pytest.approx((0.25 * 1 + 9 * 0.5) / 1.5)


def test_activation_masks_without_resampling():
    maps = torch.arange(16.0).view(1, 4, 4)
    m_img, m_act = activation_masks(maps, 4, 0.75)  # quantile 0.75 of 0..15 = 11.25
    assert m_img.flatten().tolist() == [0.0] * 12 + [1.0] * 4
    assert torch.equal(m_act, m_img[:, 0])


def test_pick_class_prototypes_stays_in_class_and_is_seeded():
    y = torch.tensor([0, 1] * 50)
    a = pick_class_prototypes(IDENTITY, y, torch.Generator().manual_seed(3))
    b = pick_class_prototypes(IDENTITY, y, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert (IDENTITY[a, y] == 1).all()
    assert set(a[y == 0].tolist()) == {0, 1} and set(a[y == 1].tolist()) == {2, 3}


def test_masking_rectangles_cover_all_channels_rows_and_columns():
    x = torch.randn(64, 3, 32, 32)
    out, rects = masking_augmentation(x, torch.Generator().manual_seed(0), prob=0.5)
    expected_changed = torch.zeros(64, 32, 32, dtype=torch.bool)
    for i in range(64):
        for top, left, h, w, fill in rects[i].tolist():
            if fill >= 0:
                assert 4 <= h < 16 and 4 <= w < 16 and top + h <= 32 and left + w <= 32
                expected_changed[i, top:top + h, left:left + w] = True
    changed = out != x  # (B, 3, S, S)
    # every channel changes on exactly the union of the rectangles (rows x columns), nowhere else
    for c in range(3):
        assert torch.equal(changed[:, c], expected_changed)
    applied = (rects[:, :, 4] >= 0).any(dim=1)
    assert 0.3 < applied.float().mean() < 0.7  # about half the images
    counts = (rects[:, :, 4] >= 0).sum(dim=1)[applied]
    assert counts.min() >= 1 and counts.max() <= 5
    # a rectangle placed below row 3 still changes the image (the reference's channel slicing did not)
    assert any(expected_changed[i, 3:].any() for i in range(64))


def test_masking_fills():
    x = torch.full((300, 3, 16, 16), 5.0)
    out, rects = masking_augmentation(x, torch.Generator().manual_seed(2), prob=1.0, max_rects=1)
    for i in range(300):
        top, left, h, w, fill = rects[i, 0].tolist()
        patch = out[i, :, top:top + h, left:left + w]
        if fill == 0:
            assert (patch == 0).all()
        elif fill == 1:
            assert (patch >= 0).all() and (patch < 1).all()
        else:
            assert (patch >= 5).all() and (patch < 6).all()
    assert set(rects[:, 0, 4].tolist()) == {0, 1, 2}


def test_masking_is_seeded():
    x = torch.randn(8, 3, 16, 16)
    a, _ = masking_augmentation(x, torch.Generator().manual_seed(9))
    b, _ = masking_augmentation(x, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_adversarial_outside_keeps_the_inside_bit_for_bit_and_stays_in_the_ball():
    model = BlurMaps()
    x = torch.rand(4, 3, 16, 16) * 2.5 - 1  # valid images: inside the bounds below
    m_img = torch.zeros(4, 1, 16, 16)
    m_img[:, :, 4:9, 5:11] = 1  # the activation region: never changed
    s = model(x)[:, 0].detach()
    m_act = torch.ones(4, 16, 16)
    bounds = (torch.full((1, 3, 1, 1), -1.0), torch.full((1, 3, 1, 1), 1.5))
    out = adversarial_outside(model, x, m_img, torch.zeros(4, dtype=torch.long), s, m_act, eps=0.3, steps=3,
                              generator=torch.Generator().manual_seed(0), bounds=bounds)
    inside = m_img.expand_as(x) > 0
    assert torch.equal(out[inside], x[inside])
    outside = ~inside
    assert ((out - x).abs()[outside] <= 0.3 + 1e-6).all()
    assert (out[outside] >= -1.0).all() and (out[outside] <= 1.5).all()
    # the steps use the budget: a random start alone moves pixels by eps/2 on average
    assert (out - x).abs()[outside].mean() > 0.7 * 0.3


def test_adversarial_crafter_is_compared_with_its_own_maps_of_x():
    """A crafter that differs from the training forward (e.g. eval mode) crafts against its own maps of
    x: with an outside that cannot move the maps, the crafted images stay where the random start put them."""
    class Shifted(PointwiseMaps):
        def forward(self, x):
            return super().forward(x) + 0.5  # a constant offset, as a change of batch-norm statistics gives

    model = PointwiseMaps()
    crafter = Shifted()
    crafter.load_state_dict(model.state_dict())
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    loss = alignment_loss(model, x, y, IDENTITY, torch.Generator().manual_seed(0),
                          adversarial={"eps": 0.4, "steps": 2, "crafter": crafter})
    assert loss.item() == 0.0  # pointwise maps: nothing outside the mask reaches the masked map values


def test_adversarial_outside_is_the_benchmarks_pgd_maximizing_the_masked_difference():
    """One PGD in the project: the crafted outside is protobench.attacks.pgd.pgd's, on the negated per-image
    masked difference, from the batch generator's uniform start, steps of eps / 2."""
    from protobench.attacks.pgd import pgd

    model = BlurMaps()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    m_img = torch.zeros(4, 1, 16, 16)
    m_img[:, :, 3:10, 6:12] = 1
    protos = torch.tensor([0, 2, 1, 3])
    s = model(x)[torch.arange(4), protos].detach()
    m_act = torch.rand(4, 16, 16)
    crafted = adversarial_outside(model, x, m_img, protos, s, m_act, eps=0.3, steps=4,
                                  generator=torch.Generator().manual_seed(3))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1

    def negated_difference(images):  # sum over the batch: -masked_distance
        return -((s - model(images)[torch.arange(4), protos]).abs() * m_act).flatten(1).sum(1) / m_act.sum()

    expected, _ = pgd(negated_difference, x, (m_img < 0.5).expand_as(x), noise, eps=0.3, step=0.15, steps=4)
    assert torch.equal(crafted, expected)
    assert masked_distance(s, model(crafted)[torch.arange(4), protos], m_act) > masked_distance(
        s, model(x)[torch.arange(4), protos], m_act)
