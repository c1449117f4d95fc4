"""Dataset layouts: how a --data value becomes a dataset (docs/datasets.md).

A layout is a `Layout` registered in LAYOUTS under its `--dataset` name. It answers three questions:

    detect(data)   does this --data value hold my layout? The dataset's root (any value `open` and
                   `splits` understand: a directory, a file, a name), or None.
    splits(root)   the split names, and which one evaluate and finetune take when --split is not given.
    open(root, split, info, max_pixels)
                   the split as a torch Dataset in the model's input format (docs/datasets.md, Adding a layout).

The built-in layouts are the modules of `protobench/layouts/`, one per layout, named after it;
each registers its instance (`LAYOUTS.add("cub", CubLayout())`).

`open_dataset` is what evaluate and finetune call: it finds the layout (the one --dataset names, or
the first whose `detect` claims --data, in `order`; ImageFolder, which claims any directory, comes
last), picks the split, opens it and checks its classes against the model. Nothing here imports
torch, so the CLI can name the layouts cheaply; each layout's module is imported when first used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protobench.errors import DataError
from protobench.registry import Registry

# Default of --max-image-pixels, checked from the header before decoding: 50 MP decodes to
# 150 MB of RGB (400 MB for 16-bit greyscale on its way to RGB) per decoding process.
MAX_IMAGE_PIXELS = 50_000_000


@dataclass(frozen=True)
class Splits:
    """A layout's split names; `evaluate` / `train`: the default of each command (None: no default)."""

    names: tuple[str, ...] = ()
    evaluate: str | None = None
    train: str | None = None


class Layout:
    """Base class of a dataset layout (see the module docstring); subclass it and register an instance."""

    title = "dataset"  # how messages name the layout, e.g. "CUB-200-2011"
    expects = ""  # what `detect` looks for, for the error when --dataset names a layout --data does not hold
    order = 50  # detection order, lowest first (ties: by name); ImageFolder's 100 makes it the fallback
    class_noun = ""  # what the dataset's classes are, for the class-count error ('' : "classes (<name>)")

    def detect(self, data: str) -> Any | None:
        raise NotImplementedError

    def splits(self, root: Any) -> Splits:
        return Splits()

    def open(self, root: Any, split: str | None, info: Any, max_pixels: int):
        raise NotImplementedError


LAYOUTS: Registry[Layout] = Registry("dataset layout", group="protobench.datasets",
                                     check=lambda obj: isinstance(obj, Layout),
                                     expects="an instance of protobench.data.layouts.Layout",
                                     package="protobench.layouts")


@dataclass(frozen=True)
class Found:
    """The layout a --data value holds, under its registered name, and the dataset's root."""

    name: str
    layout: Layout
    root: Any

    def split(self, split: str | None, purpose: str = "evaluate") -> str | None:
        """`split` checked against the layout's names, or the layout's default for `purpose`
        ('evaluate' or 'train'; a layout without a training split trains on its evaluation split)."""
        splits = self.layout.splits(self.root)
        if split is None:
            return (splits.train if purpose == "train" else None) or splits.evaluate
        if not splits.names:
            raise DataError(f"{self.layout.title} data has no splits: drop --split and point --data at "
                            "the split's own folder")
        if split not in splits.names:
            raise DataError(f"unknown --split {split!r} for {self.layout.title}: use {_either(splits.names)}")
        return split


def find(data: str, layout: str | None = None) -> Found:
    """The layout `data` holds: the one named by --dataset (`layout`), else the first that detects it."""
    data = str(data)
    if layout is not None:
        chosen = LAYOUTS.get(check_name(layout))
        root = chosen.detect(data)
        if root is None:
            _check_exists(data)
            raise DataError(f"--dataset {layout}: {data} does not hold the {chosen.title} layout (expected "
                            f"{chosen.expects or 'what docs/datasets.md describes'}); see docs/datasets.md")
        return Found(layout, chosen, root)
    for name, candidate in sorted(LAYOUTS.items(), key=lambda item: (item[1].order, item[0])):
        root = candidate.detect(data)
        if root is not None:
            return Found(name, candidate, root)
    _check_exists(data)
    raise DataError(f"{data} holds no dataset layout protobench knows ({', '.join(LAYOUTS.names())}): "
                    "see docs/datasets.md")


def check_name(layout: str) -> str:
    """A --dataset value: a registered layout's name (DataError with the known names otherwise)."""
    if layout not in LAYOUTS:
        raise DataError(f"--dataset: {LAYOUTS.unknown(layout)}")
    return layout


def default_split(data: str, layout: str | None = None, purpose: str = "evaluate") -> str | None:
    """The split a command takes from `data` when --split is not given (None: the layout has none)."""
    return find(data, layout).split(None, purpose)


def open_dataset(data: str, info: Any, layout: str | None = None, split: str | None = None,
                 max_pixels: int | None = None):
    """The dataset at `data` in the model's input format (info: ModelInfo), its classes checked
    against the model's. layout: a LAYOUTS name (None: detect). split: None for the layout's
    evaluation default. max_pixels: images larger than this are skipped unread (0: no limit;
    None: MAX_IMAGE_PIXELS)."""
    if max_pixels is None:
        max_pixels = MAX_IMAGE_PIXELS
    found = find(data, layout)
    dataset = found.layout.open(found.root, found.split(split), info, max_pixels)
    if len(dataset.classes) != info.num_classes:
        noun = found.layout.class_noun or f"classes ({found.name})"
        raise DataError(f"{data} has {len(dataset.classes)} {noun} but the model predicts "
                        f"{info.num_classes} classes: point --data at the dataset the model was trained on")
    check_class_names(data, list(map(str, dataset.classes)), getattr(info, "classes", None))
    return dataset


def check_class_names(data: str, found: list[str], recorded: Any) -> None:
    """A DataError when the checkpoint records its class names and the dataset's differ (order included):
    every prediction would be scored against the wrong label."""
    if not recorded or found == list(recorded):
        return
    first = next(i for i, (a, b) in enumerate(zip(found, recorded)) if a != b)
    differ = sum(a != b for a, b in zip(found, recorded))
    how = ("the same names in another order" if sorted(found) == sorted(recorded) else "other names")
    raise DataError(f"{data}'s classes are not the ones the checkpoint records ({how}; {differ} of {len(found)} "
                    f"differ, first class {first}: {found[first][:60]!r} here, {str(recorded[first])[:60]!r} in the "
                    "checkpoint): every accuracy would be scored against the wrong labels; name and order the "
                    "class folders as the checkpoint does")


def marked_root(data: str, marker: str, subdir: str) -> Path | None:
    """For a directory layout: `data`, or `data/subdir` (as archives unpack), whichever holds the
    file `marker`; None when neither does."""
    root = Path(data)
    for candidate in (root, root / subdir):
        if (candidate / marker).is_file():
            return candidate
    return None


def _check_exists(data: str) -> None:
    if not Path(data).exists():
        raise DataError(f"data directory not found: {data}")


def _either(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
