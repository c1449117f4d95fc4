"""What `protobench.evaluate` accepts as data, made into what the benchmark loop reads.

- A dataset directory (any layout `--data` reads) or `protoshapes[:split]`: opened exactly as the CLI
  opens it.
- A torch Dataset yielding `(image, label)`: image a float tensor (3, S, S) normalized as the model
  expects (`model.info`), label an int in [0, C).
- A DataLoader: read through its dataset.

Items are identified by their index in the Dataset (for a DataLoader: in `loader.dataset`), as the
CLI identifies an image by its index in the dataset directory's sorted list. The seeded random start
of the attack, `limit`'s subset and the `index` column all follow that index, and protobench batches
the dataset itself, in index order: the loader's sampler, shuffling, batch size and collate function
change no number. To evaluate part of a dataset, pass a `torch.utils.data.Subset` or use `limit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protobench.api.calls import public
from protobench.errors import DataError


@dataclass
class Source:
    """The data of a run: `data` is what meta.json records (a path or `memory:<class>`); `given` the
    caller's Dataset of (image, label), `images` a directory opened already (open_images), both None when
    the run opens `data` itself (with `layout` and `split`)."""

    data: str
    given: Any = None
    images: Any = None
    layout: str | None = None
    split: str | None = None

    def open(self, info: Any) -> Any:
        """The dataset the run reads, items (image, label, index), for a model of `info` (its input size,
        normalization and classes check every item); None: the run opens `data` as the CLI does."""
        if self.given is None:
            return self.images
        items = Items(self.given, info)
        if len(items) == 0:
            raise DataError(f"the {items.what} is empty")
        items[0]  # a wrong item format is found now, before the run starts
        return items


class Images(torch.utils.data.Dataset):
    """A dataset directory in a model's input format, yielding (image, label): for training loops and
    DataLoaders. `protobench.evaluate` given it (or a DataLoader over it) reads the directory as the CLI
    does, so its numbers are the CLI's."""

    def __init__(self, data: str, images: Any):
        self.data, self.images = data, images
        self.paths, self.classes = images.paths, images.classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from protobench.data.imagelist import skip_reason

        x, y, _ = self.images[index]
        if x is None:
            raise DataError(f"cannot use image {skip_reason(self.images, index)}")
        return x, y


@public
def open_images(data: str | Path, model: Any, *, dataset: str | None = None, split: str | None = None,
                max_image_pixels: int | None = None) -> Images:
    """A dataset directory (or `protoshapes[:split]`) as a torch Dataset of (image, label) in the
    model's input format (resized, cropped and normalized as `protobench evaluate` does).

    Args:
        data: the directory (CUB-200-2011, Stanford Cars, an ImageFolder, a plugin's layout) or protoshapes.
        model: the Model (or module) whose input format the images take.
        dataset: the layout's name (default: detected); split: its split (default: its test split).
    """
    from protobench.api.model import as_model
    from protobench.run.evaluate import load_dataset

    images, _ = load_dataset(str(data), as_model(model).info, dataset, split, max_image_pixels)
    return Images(str(data), images)


class Items(torch.utils.data.Dataset):
    """A user's Dataset of (image, label), each item checked and given its index: (image, label, index)."""

    def __init__(self, dataset: Any, info: Any):
        self.dataset, self.info = dataset, info
        self.what = f"{type(dataset).__name__} dataset"
        self.paths = [f"{type(dataset).__name__}[{i}]" for i in range(len(dataset))]
        self.root, self.files, self.kind = ".", self.paths, "in-memory"  # the fingerprint: its class and length
        self.classes = list(getattr(dataset, "classes", []))  # class names, where the Dataset has them

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(f"item {index} of the {self.what} is a {type(item).__name__}, not an (image, label) "
                            "pair: make its __getitem__ return (image, label)")
        return self.image(item[0], index), self.label(item[1], index), index

    def image(self, x: Any, index: int) -> torch.Tensor:
        size = self.info.input_size
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or tuple(x.shape) != (3, size, size):
            got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else \
                f"a {type(x).__name__}"
            raise DataError(f"item {index} of the {self.what} is {got}; the model takes float tensors of shape "
                            f"(3, {size}, {size}), normalized with mean {self.info.mean} and std {self.info.std}: "
                            "resize and normalize them in the dataset's transform")
        return x.detach().float().cpu()

    def label(self, y: Any, index: int) -> int:
        try:
            value = int(y)
        except (TypeError, ValueError, RuntimeError):
            value = None
        classes = self.info.num_classes
        if value is None or isinstance(y, float) or not 0 <= value < classes:
            raise DataError(f"item {index} of the {self.what} has label {y!r}; the model has {classes} classes: "
                            f"labels must be whole numbers from 0 to {classes - 1}")
        return value


def source(data: Any, demo_model: bool, layout: str | None = None, split: str | None = None) -> Source:
    """The run's data from what `evaluate` was given (see the module docstring); None: the demo data,
    for the demo model."""
    from protobench.run.defaults import evaluate_data

    data = evaluate_data(data, demo_model)
    if isinstance(data, (str, Path)):
        return Source(str(data), layout=layout, split=split)
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    if isinstance(data, Images):
        return Source(data.data, images=data.images)
    if not isinstance(data, torch.utils.data.Dataset) or not hasattr(data, "__len__"):
        raise DataError(f"evaluate's data is a {type(data).__name__}: give a dataset directory, a torch Dataset "
                        "of (image, label) with a length, or a DataLoader over one")
    return Source(f"memory:{type(data).__name__}", given=data)
