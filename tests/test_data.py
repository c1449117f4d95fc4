"""Image decoding: any PIL mode becomes RGB, non-square images are squashed, values normalized."""

import numpy as np
import pytest
import torch
from PIL import Image

from protobench.data.imagelist import load_image, random_subset
from protobench.errors import DataError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _expected(rgb):
    return [(v / 255 - 0.5) / 0.25 for v in rgb]


@pytest.mark.parametrize("mode, value, rgb", [
    ("L", 128, (128, 128, 128)),  # greyscale -> three equal channels
    ("RGBA", (10, 20, 30, 0), (10, 20, 30)),  # alpha dropped, colour kept
    ("RGB", (200, 100, 0), (200, 100, 0)),
    ("CMYK", (0, 0, 0, 0), (255, 255, 255)),  # no ink = white
    ("I;16", 65535, (255, 255, 255)),  # 16-bit greyscale: scaled, not clipped at 255
    ("I;16", 32896, (128, 128, 128)),
])
def test_every_mode_becomes_rgb(tmp_path, mode, value, rgb):
    path = tmp_path / ("img.tiff" if mode in ("CMYK", "I;16") else "img.png")
    Image.new(mode, (10, 6), value).save(path)
    x = load_image(path, 8, MEAN, STD)
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(x[c], torch.full((8, 8), _expected(rgb)[c]), atol=1e-6)


def test_palette_image(tmp_path):
    img = Image.new("P", (4, 4))
    img.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    img.save(tmp_path / "p.png")
    x = load_image(tmp_path / "p.png", 4, MEAN, STD)
    assert torch.allclose(x[:, 0, 0], torch.tensor(_expected((255, 0, 0))))


def test_non_square_images_are_squashed_not_cropped(tmp_path):
    pixels = np.zeros((10, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white: stays the left half after squashing to 8x8
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png", 8, (0, 0, 0), (1, 1, 1))
    assert torch.allclose(x[:, :, :3], torch.ones(3, 8, 3)) and torch.allclose(x[:, :, 5:], torch.zeros(3, 8, 3))


def test_limit_draws_a_fixed_sorted_subset():
    a = random_subset(100, 10, seed=0)
    assert a == random_subset(100, 10, seed=0) and a == sorted(a) and len(set(a)) == 10
    assert a != random_subset(100, 10, seed=1)
    assert random_subset(5, 10, seed=0) == [0, 1, 2, 3, 4]
    with pytest.raises(DataError):
        random_subset(5, 0, seed=0)
