"""ProtoShapes: the built-in demo dataset, drawn procedurally from a seed (no files).

Each image's class is split between a local *part* and its *context*. A small coloured
square (colour = class mod 3) sits at a random place, inside a plain grey ring, inside a
frame of fine, faint stripes whose orientation is the class's (class div 3); the rest of
the image is striped the other way. Neither the square nor the stripes alone tell the
class, so a ProtoPNet prototype can only be class-specific if its patch sees the square
*and* the frame around it. The similarity map highlights a small region, but the frame
evidence comes through the receptive field from pixels outside it: the spatial
misalignment protobench measures (see docs/demo.md).

Every image is a pure function of (seed, split, index), quantized to 8 bits, so an
exported PNG decodes to exactly the tensor the benchmark sees.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from protobench.data.imagelist import normalize
from protobench.data.layouts import Layout, Splits
from protobench.demo import DEMO_DATA as NAME, is_demo_data
from protobench.errors import DataError
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD

SPLITS = {"train": 0, "test": 1}
# the parts that define a class: the coloured square (colour) and the striped frame around it
# (orientation), whose band is annotated at the middle of each side; the field beyond is context
PARTS = ("square", "frame-top", "frame-right", "frame-bottom", "frame-left")
COLOURS = {"red": (0.86, 0.18, 0.16), "green": (0.20, 0.70, 0.22), "blue": (0.18, 0.32, 0.92)}
ORIENTATIONS = ("horizontal", "vertical")


@dataclass(frozen=True)
class ShapesDesign:
    """Everything that decides the images (recorded beside the demo weights)."""

    size: int = 64  # image side, px
    part: int = 12  # side of the coloured square, px
    ring: int = 3  # plain grey band between the square and the stripes, px
    period: int = 4  # stripe period, px (half dark, half light)
    frame: int = 8  # width of the class-orientation stripes around the ring, px (0: the whole field)
    contrast: float = 0.06  # stripe amplitude around the grey (0..1 pixel units)
    colour_jitter: float = 0.05  # per-image random shift of the square's colour
    grey: float = 0.5  # background level
    jitter: float = 0.04  # per-image random shift of the background level
    train_images: int = 1800
    test_images: int = 150
    seed: int = 0

    @property
    def classes(self) -> list[str]:
        """'<label>-<colour>-<orientation>', numbered so that sorted folder names keep label order."""
        names = [(c, o) for o in ORIENTATIONS for c in COLOURS]
        return [f"{i}-{c}-{o}" for i, (c, o) in enumerate(names)]

    def as_dict(self) -> dict:
        return asdict(self)


def _placement(design: ShapesDesign, split: str, index: int) -> tuple[np.random.Generator, int, int]:
    """The image's generator and the square's top-left corner: its first draw, 2 px from the edges at least."""
    rng = np.random.default_rng([design.seed, SPLITS[split], index])
    top, left = (int(v) for v in rng.integers(2, design.size - design.part - 2 + 1, size=2))
    return rng, top, left


def draw(design: ShapesDesign, split: str, index: int) -> tuple[np.ndarray, int]:
    """One image (size, size, 3) uint8 and its label; a pure function of (design, split, index)."""
    label = index % len(design.classes)
    vertical = label // len(COLOURS) == 1
    rng, top, left = _placement(design, split, index)
    s, k = design.size, design.part
    phase = int(rng.integers(design.period))
    grey = design.grey + rng.uniform(-design.jitter, design.jitter)
    colour = np.array(list(COLOURS.values())[label % len(COLOURS)])
    colour = colour + rng.uniform(-design.colour_jitter, design.colour_jitter, size=3)

    rows, cols = np.mgrid[0:s, 0:s]
    # (s, s) chessboard distance to the square: 0 on it, 1..ring grey, then the frame, then the field
    dist = np.maximum(np.maximum(top - rows, rows - (top + k - 1)), np.maximum(left - cols, cols - (left + k - 1)))
    own = dist <= design.ring + design.frame if design.frame else dist >= 0
    vertical_here = np.where(own, vertical, not vertical)
    along = np.where(vertical_here, cols, rows)  # vertical stripes vary along the columns
    stripes = np.where((along + phase) % design.period < design.period / 2, 1.0, -1.0) * design.contrast
    img = np.full((s, s, 3), grey) + np.where(dist > design.ring, stripes, 0.0)[..., None]
    img[top:top + k, left:left + k] = colour
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), label


def part_keypoints(design: ShapesDesign, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Where image `index` holds each of PARTS: (K, 2) x, y in pixels (continuous: pixel i spans [i, i+1))
    and (K,) visible, without drawing it. The square's centre, and the middle of each side of the
    striped frame's band (its centre line, half-way along the side); a frame side off the image is not
    visible."""
    _, top, left = _placement(design, split, index)
    centre = np.array([left + design.part / 2, top + design.part / 2])
    reach = design.part / 2 + design.ring + design.frame / 2  # square centre -> the band's centre line
    offsets = np.array([[0, 0], [0, -reach], [reach, 0], [0, reach], [-reach, 0]])
    xy = centre + offsets
    return xy, ((xy >= 0) & (xy < design.size)).all(axis=1)


class ProtoShapes(torch.utils.data.Dataset):
    """One split of ProtoShapes, generated on access: items are (image normalized, label, index)."""

    def __init__(self, split: str = "test", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, design: ShapesDesign | None = None, n: int | None = None):
        if split not in SPLITS:
            raise DataError(f"unknown {NAME} split {split!r}: use {' or '.join(SPLITS)}")
        self.design = design or ShapesDesign()
        self.split = split
        total = self.design.train_images if split == "train" else self.design.test_images
        self.n = total if n is None else n
        if self.n <= 0:
            raise DataError(f"a {NAME} split needs at least one image, got n={self.n}")
        self.mean, self.std = tuple(mean), tuple(std)
        self.classes = self.design.classes
        self.paths = [f"{NAME}/{split}/{i:05d}.png" for i in range(self.n)]
        self.labels = [i % len(self.classes) for i in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def pixels(self, index: int) -> np.ndarray:
        """Image `index` as (size, size, 3) uint8."""
        if not 0 <= index < self.n:
            raise IndexError(index)
        return draw(self.design, self.split, index)[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        x = torch.from_numpy(self.pixels(index).astype(np.float32) / 255.0).permute(2, 0, 1)
        return normalize(x, self.mean, self.std), self.labels[index], index

    def part_locations(self, indices: Sequence[int]):
        """The keypoints of PARTS in images `indices` (the images are the model's input: no crop, no resize)."""
        from protobench.data.parts import PartLocations, to_input

        xy, visible = np.zeros((self.n, len(PARTS), 2)), np.zeros((self.n, len(PARTS)), dtype=bool)
        for i in indices:
            xy[i], visible[i] = part_keypoints(self.design, self.split, i)
        crops = np.tile([0.0, 0.0, self.design.size, self.design.size], (self.n, 1))
        return PartLocations(PARTS, to_input(xy, visible, crops, self.design.size), ())


class ShapesLayout(Layout):
    """`--data protoshapes[:split]`: a name, not a directory (docs/demo.md). The name alone holds
    both splits; `protoshapes:<split>` holds that split only, so finetune and evaluate both take it."""

    title = "ProtoShapes"
    expects = f"{NAME} or {NAME}:<split>, the demo data (no directory)"
    order = 0  # a reserved name: before any directory layout, even if a folder of that name exists

    def detect(self, data: str) -> str | None:
        return data if is_demo_data(data) else None

    def splits(self, root: str) -> Splits:
        named = root.partition(":")[2]
        if not named:
            return Splits(tuple(SPLITS), evaluate="test", train="train")
        if named not in SPLITS:
            raise DataError(f"unknown {NAME} split {named!r}: use {' or '.join(SPLITS)}")
        return Splits((named,), evaluate=named, train=named)

    def open(self, root: str, split: str, info, max_pixels: int) -> ProtoShapes:
        design = ShapesDesign()
        if info.input_size != design.size:
            raise DataError(f"{NAME} images are {design.size} px but the model takes {info.input_size} px: "
                            f"{NAME} is for the built-in demo model (run `protobench evaluate` without --ckpt)")
        return ProtoShapes(split, info.mean, info.std, design)


LAYOUT = ShapesLayout()


def export(out: str | os.PathLike, split: str = "test", n: int | None = None) -> int:
    """Write a split as PNGs in ImageFolder layout, OUT/<class>/<index>.png; returns the count."""
    from PIL import Image

    dataset = ProtoShapes(split, n=n)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty directory: choose a new directory to export to")
    for name in dataset.classes:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i in range(len(dataset)):
        Image.fromarray(dataset.pixels(i)).save(out / dataset.classes[dataset.labels[i]] / f"{i:05d}.png")
    return len(dataset)
