"""The prototype side of "this looks like that": each drawn prototype's source patch.

A ProtoPNet-style prototype is projected ("pushed") onto the training patch of its own class
nearest to it, so its most similar patch among the training images of its class is its source.
One batched forward pass over those images (the training split: `--train-data`, or the run's own
dataset's training split when its layout has one) finds, for every prototype asked for, the image
and map cell of its highest activation. Without a training split the same search runs over the
evaluated images, and the page says so: that patch is the nearest one the run saw, not
necessarily the source.

The result is cached in the report's output directory (prototype-sources-<checkpoint sha256>.json), keyed by
the checkpoint's sha256, the searched data's fingerprint and the prototype distance's precision; a later
report into the same directory searches only the prototypes the cache lacks. The demo model's sources
ship with the package in the same form (protobench/demo/protoshapes-sources.json, written by
`demo_sources`): a report whose key is that file's takes them from there instead of searching.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from protobench.report.runs import Run

FORMAT = "protobench-prototype-sources/2"  # 2: the key names the distance (--distance)
BOX_QUANTILE = 0.95  # the patch drawn: the box of the upsampled map's top 5% (as ProtoPNet draws its patches)


@dataclass
class Source:
    """Where prototype `proto` is most active among the searched images."""

    proto: int
    index: int  # the image's index in the searched dataset
    path: str
    label: int
    cell: int  # row * w + col of the map cell
    activation: float
    box: tuple[int, int, int, int]  # top, bottom, left, right (exclusive ends), in input pixels
    weight: float | None = None  # class-connection weight to the prototype's class (None: not a linear layer)


@dataclass
class Sources:
    """The searched data, in words, and what was found there."""

    training: bool  # False: the evaluated data (no training split)
    where: str  # e.g. "the train split of protoshapes"
    found: dict[int, Source]
    dataset: Any = None  # to draw the patches (None: not available now)


def nearest_patches(adapter: Any, dataset: Any, protos: list[int], batch_size: int = 32) -> dict[int, tuple]:
    """For each prototype in `protos`: (index, cell, activation) of its highest activation over the
    images of its own classes in `dataset` (all images for a prototype without a class), in one batched
    pass; ties keep the earlier image. Only images of a wanted class are read where the dataset
    lists its labels. The model runs as in the benchmark loop: on the CPU, fixed chunks measured side
    by side (protobench.run.chunks), so an image's activations do not depend on `batch_size`."""
    import torch

    from protobench.data.imagelist import Subset, collate
    from protobench.run import chunks
    from protobench.run.forward import Runtime, frozen_eval, model_forward

    identity = adapter.prototype_class_identity.detach().cpu() > 0  # (P, C)
    chosen = torch.tensor(protos, dtype=torch.long)
    allowed = identity[chosen] | ~identity[chosen].any(dim=1, keepdim=True)  # (K, C): a classless one takes all
    wanted = set(allowed.any(dim=0).nonzero().flatten().tolist())
    labels = getattr(dataset, "labels", None)
    indices = [i for i, y in enumerate(labels) if y in wanted] if labels is not None else list(range(len(dataset)))
    loader = torch.utils.data.DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                                         collate_fn=collate)
    runtime = Runtime.for_device(adapter.device, adapter.info.input_size)
    forward = model_forward(adapter, runtime)
    threads = chunks.side_by_side(runtime.threads, runtime.chunk, adapter.concurrent, False)

    def measure(x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, _: Any) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # grad mode is per thread
            evidence = forward(x.to(adapter.device))
            return {"act": evidence.act[:, chosen].double().cpu(), "cells": evidence.part_cells[:, chosen, 0].cpu()}

    best = torch.full((len(protos),), -math.inf, dtype=torch.float64)
    where = torch.full((len(protos),), -1, dtype=torch.long)
    cell = torch.zeros(len(protos), dtype=torch.long)
    with frozen_eval(adapter.model), torch.no_grad(), chunks.chunk_workers(threads) as pool:
        for x, y, ids, _ in loader:
            if x is None:
                continue
            found = chunks.measure_chunks(pool, runtime.chunk, measure, x, y, ids, None)
            act = found["act"].masked_fill(~allowed[:, y].t(), -math.inf)  # (B, K)
            top, row = act.max(dim=0)
            better = top > best
            best = torch.where(better, top, best)
            where = torch.where(better, ids[row], where)
            cell = torch.where(better, found["cells"][row, torch.arange(len(protos))], cell)
    return {p: (int(where[k]), int(cell[k]), float(best[k])) for k, p in enumerate(protos) if where[k] >= 0}


def patch_boxes(adapter: Any, dataset: Any, hits: dict[int, tuple]) -> dict[int, tuple[int, int, int, int]]:
    """The drawn patch of each hit: the bounding box of its image's upsampled (bicubic) map at or above
    its 95th percentile."""
    import torch
    import torch.nn.functional as F

    from protobench.core.regions import quantile
    from protobench.run.forward import Runtime, frozen_eval, model_forward

    if not hits:
        return {}
    size = adapter.info.input_size
    order = list(hits)
    x = torch.stack([dataset[hits[p][0]][0] for p in order]).to(adapter.device)
    with frozen_eval(adapter.model), torch.no_grad():
        maps = model_forward(adapter, Runtime())(x).maps.clamp(min=0).cpu()
    own = maps[torch.arange(len(order)), torch.tensor(order)]  # (K, h, w)
    up = F.interpolate(own[:, None].float(), size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    high = up >= quantile(up.flatten(1), BOX_QUANTILE)[:, None, None]
    boxes = {}
    for k, p in enumerate(order):
        rows, cols = high[k].any(dim=1).nonzero().flatten(), high[k].any(dim=0).nonzero().flatten()
        boxes[p] = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    return boxes


def connection_weights(adapter: Any) -> Any:
    """The (C, P) class-connection weights of a family whose logits are a linear layer of the
    prototypes' activations (`last_layer`, as ProtoPNet and its family name it); None otherwise."""
    layer = getattr(adapter.model, "last_layer", None)
    weight = getattr(layer, "weight", None)
    shape = (adapter.info.num_classes, adapter.info.num_prototypes)
    return weight.detach().cpu() if weight is not None and tuple(weight.shape) == shape else None


def search_data(run: Run, adapter: Any, train_data: str | None, data: str | None = None) -> tuple[Any, str, bool, str]:
    """(dataset, its name, whether it is training data, its data path): --train-data, the run's
    dataset's (`data`: its new place) training split, or, lacking both, the evaluated data."""
    from protobench.data.layouts import find
    from protobench.run.evaluate import load_dataset

    meta = run.meta
    data, layout = train_data or data or str(meta.get("dataset")), None if train_data else meta.get("dataset_kind")
    found = find(data, layout)
    split = found.split(None, "train")
    splits = found.layout.splits(found.root)
    training = bool(train_data) or (splits.train is not None and split != meta.get("split"))
    if not training:
        split = meta.get("split")
    dataset, _ = load_dataset(data, adapter.info, found.name, split, meta.get("max_image_pixels"))
    name = f"{'the ' + split + ' split of ' if split else ''}{data}"
    return dataset, name, training, data


def cache_file(run: Run, cache_dir: Path) -> Path:
    """Where the report in `cache_dir` caches `run`'s source patches: one file per checkpoint, inside the
    report's own output directory (a report writes nothing outside --out)."""
    sha = str(run.meta.get("checkpoint_sha256") or "unknown")
    return cache_dir / f"prototype-sources-{''.join(c for c in sha if c.isalnum())[:16]}.json"


def source_key(run: Run, adapter: Any, train_data: str | None,
               data: str | None = None) -> tuple[Any, str, bool, dict[str, Any]]:
    """(dataset, its name, whether it is training data, the cache key): what is searched, and what a cache of
    its result must have been made with. The distance is part of the key: float32's activations differ from
    float64's (at the demo's pushed prototypes by up to 1e-3, moving one patch's box by a pixel), enough to
    pick another patch in a near tie."""
    from protobench.report.pixels import distance_of
    from protobench.run.provenance import dataset_fingerprint_of

    dataset, name, training, data = search_data(run, adapter, train_data, data)
    key = {"format": FORMAT, "checkpoint_sha256": run.meta.get("checkpoint_sha256"), "data": name,
           "training": training, "fingerprint": dataset_fingerprint_of(dataset, data).get("sha256"),
           "distance": distance_of(run)}
    return dataset, name, training, key


def search(adapter: Any, dataset: Any, protos: list[int]) -> dict[str, dict[str, Any]]:
    """The cache entries of the source patches of `protos` found in `dataset` (none for a prototype
    whose classes have no image there)."""
    hits = nearest_patches(adapter, dataset, protos)
    boxes = patch_boxes(adapter, dataset, hits)
    weights = connection_weights(adapter)
    classes = adapter.prototype_class_identity.detach().cpu().argmax(dim=1)
    return {str(p): {"index": index, "path": dataset.paths[index], "label": int(dataset.labels[index]),
                     "cell": cell, "activation": act, "box": list(boxes[p]),
                     "weight": None if weights is None else float(weights[classes[p], p])}
            for p, (index, cell, act) in hits.items()}


def find_sources(run: Run, adapter: Any, protos: list[int], train_data: str | None,
                 log: Callable[[str], None] = lambda _: None, data: str | None = None,
                 cache_dir: Path | None = None) -> Sources:
    """The source patches of `protos`, from the cache in `cache_dir` where it has them, then from the demo's
    shipped sources where the key is theirs, searched otherwise (and cached in `cache_dir`)."""
    from protobench.demo import DEMO_SOURCES

    dataset, name, training, key = source_key(run, adapter, train_data, data)
    where = cache_file(run, cache_dir) if cache_dir is not None else None
    size = adapter.info.input_size
    cache = _read(where, key, len(dataset), size) if where is not None else {}
    known = len(cache)
    if any(str(p) not in cache for p in protos):
        shipped = _read(DEMO_SOURCES, key, len(dataset), size)
        cache.update({str(p): shipped[str(p)] for p in protos if str(p) not in cache and str(p) in shipped})
    missing = [p for p in protos if str(p) not in cache]
    if missing:
        log(f"finding the source patches of {len(missing)} prototypes in {name}")
        cache.update(search(adapter, dataset, missing))
    if where is not None and len(cache) > known:
        _write(where, key, cache)
    found = {p: Source(p, c["index"], c["path"], c["label"], c["cell"], c["activation"], tuple(c["box"]),
                       c.get("weight"))
             for p in protos if (c := cache.get(str(p)))}
    return Sources(training, name, found, dataset)


def demo_sources(ckpt: str | Path) -> dict[str, Any]:
    """The source patches of every prototype of the demo model in `ckpt`, in the demo's train split, as the
    report of `protobench evaluate` (the demo, default float64 distance) caches them: what
    scripts/train_demo.py ships beside the weights."""
    import torch

    from protobench.checkpoints.formats import sha256
    from protobench.demo import DEMO_DATA
    from protobench.run.evaluate import MAX_IMAGE_PIXELS, load_adapter

    adapter = load_adapter("auto", str(ckpt), {}, torch.device("cpu"))
    meta = {"checkpoint_sha256": sha256(ckpt), "dataset": DEMO_DATA, "max_image_pixels": MAX_IMAGE_PIXELS,
            "distance": "float64"}
    run = Run(dir=Path(ckpt).parent, model=DEMO_DATA, meta=meta, summary={}, per_image=None)
    dataset, _, _, key = source_key(run, adapter, None)
    return {"key": key, "prototypes": search(adapter, dataset, list(range(adapter.info.num_prototypes)))}


def write_demo_sources(ckpt: str | Path, path: str | Path) -> None:
    """Write `demo_sources(ckpt)` to `path` (the shipped file: protobench/demo/protoshapes-sources.json)."""
    from protobench.files import atomic_write_text

    atomic_write_text(Path(path), _text(demo_sources(ckpt)) + "\n")


def _read(path: Path, key: dict[str, Any], images: int, size: int) -> dict[str, Any]:
    """The well-formed cached prototypes of a cache made with `key` (of a dataset of `images` images of `size`
    px); {} when absent, damaged or made otherwise."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return {p: c for p, c in dict(stored["prototypes"]).items() if _entry_ok(c, images, size)} \
            if stored.get("key") == key else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _entry_ok(entry: Any, images: int, size: int) -> bool:
    """Whether a cache entry has every field, of its type, names an image of the searched data, and boxes a
    non-empty patch inside its `size` px (a card crops the image to it)."""
    def whole(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    box = entry.get("box") if isinstance(entry, dict) else None
    return (isinstance(entry, dict) and whole(entry.get("index")) and 0 <= entry["index"] < images
            and isinstance(entry.get("path"), str) and whole(entry.get("label")) and whole(entry.get("cell"))
            and isinstance(entry.get("activation"), float) and isinstance(box, list) and len(box) == 4
            and all(whole(b) for b in box) and 0 <= box[0] < box[1] <= size and 0 <= box[2] < box[3] <= size
            and (entry.get("weight") is None or isinstance(entry["weight"], float)))


def _text(cache: dict[str, Any]) -> str:
    """A cache file's text (the format of the run directory's cache and of the demo's shipped file alike)."""
    return json.dumps(cache, indent=1, sort_keys=True)


def _write(path: Path, key: dict[str, Any], prototypes: dict[str, Any]) -> None:
    """The cache, atomically; a run directory that cannot be written just keeps no cache."""
    from protobench.errors import OutputError
    from protobench.files import atomic_write_text

    try:
        atomic_write_text(path, _text({"key": key, "prototypes": prototypes}))
    except (OSError, OutputError):
        pass
