"""`protobench evaluate` as a library call: load, check, run, write the three result files."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol as TypingProtocol

from protobench.benchmark import Protocol
from protobench.errors import DataError, ProtobenchError

RESULT_FILES = ("per_image.csv", "summary.csv", "meta.json")


class Progress(TypingProtocol):
    def start(self, total: int, description: str) -> None: ...
    def update(self, rows: list[dict], skipped: list[int]) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def start(self, total: int, description: str) -> None: ...
    def update(self, rows: list[dict], skipped: list[int]) -> None: ...
    def stop(self) -> None: ...


@dataclass
class EvaluateConfig:
    ckpt: str
    data: str
    out: str
    adapter: str = "protopnet"
    adapter_options: dict[str, Any] = field(default_factory=dict)
    protocol: Protocol = field(default_factory=Protocol)
    batch_size: int = 32
    device: str = "auto"
    workers: int = 0
    limit: int | None = None
    overwrite: bool = False


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ProtobenchError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ProtobenchError(f"unknown device {name!r}: use auto, cpu or cuda[:N]") from None


def check_out_dir(out: Path, overwrite: bool) -> None:
    existing = [name for name in RESULT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise ProtobenchError(f"{out} already holds results ({', '.join(existing)}): "
                              "pass --overwrite to replace them or choose another --out")
    if out.exists() and not out.is_dir():
        raise ProtobenchError(f"--out {out} is a file, not a directory")


def load_adapter(name: str, ckpt: str, options: dict[str, Any], device):
    from protobench.adapter import get_adapter

    return get_adapter(name).load(ckpt, **options).to(device)


def load_dataset(data: str, info):
    from protobench.data import ImageFolder
    from protobench.demo import shapes

    if shapes.split_of(data) is not None:  # the reserved name of the built-in demo data
        dataset = shapes.load(data, info.input_size, info.mean, info.std)
    else:
        dataset = ImageFolder(data, info.input_size, info.mean, info.std)
    if len(dataset.classes) != info.num_classes:
        raise DataError(f"{data} has {len(dataset.classes)} class folders but the model predicts "
                        f"{info.num_classes} classes: point --data at the dataset the model was trained on")
    return dataset, dataset.paths


def evaluate(cfg: EvaluateConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark on one model and write per_image.csv, summary.csv and meta.json to cfg.out."""
    import pandas as pd
    import torch

    from protobench import __version__, benchmark, results
    from protobench.checkpoint import sha256
    from protobench.data import Subset, random_subset

    progress = progress or NoProgress()
    out = Path(cfg.out)
    check_out_dir(out, cfg.overwrite)
    device = resolve_device(cfg.device)
    adapter = load_adapter(cfg.adapter, cfg.ckpt, cfg.adapter_options, device)
    dataset, paths = load_dataset(cfg.data, adapter.info)
    indices = random_subset(len(dataset), cfg.limit, cfg.protocol.seed)
    subset = Subset(dataset, indices)

    chunk = benchmark.default_chunk(device)
    started = time.perf_counter()
    progress.start(len(subset), Path(cfg.ckpt).stem)
    try:
        records, skipped = benchmark.run(adapter, subset, paths, cfg.protocol, batch_size=cfg.batch_size,
                                         workers=cfg.workers, chunk=chunk, on_batch=progress.update)
    finally:
        progress.stop()
    wall = time.perf_counter() - started
    if not records:
        raise DataError(f"none of the {len(subset)} images in {cfg.data} could be decoded")

    model = Path(cfg.ckpt).stem
    per_image = pd.DataFrame(records, columns=results.PER_IMAGE_COLUMNS)
    summary = results.summarize(per_image, model, cfg.protocol.seed)
    meta = {
        "protobench_version": __version__,
        "torch_version": torch.__version__,
        "torchvision_version": _version("torchvision"),
        "python_version": platform.python_version(),
        "command": " ".join(["protobench", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "adapter": cfg.adapter,
        "adapter_options": cfg.adapter_options,
        "model_info": adapter.info.__dict__,
        "checkpoint": str(Path(cfg.ckpt).resolve()) if Path(cfg.ckpt).exists() else cfg.ckpt,
        "checkpoint_sha256": sha256(cfg.ckpt) if Path(cfg.ckpt).is_file() else None,
        "dataset": str(Path(cfg.data).resolve()) if Path(cfg.data).exists() else cfg.data,
        "dataset_images": len(dataset),
        "evaluated_images": len(records),
        "skipped_images": [paths[i] for i in skipped],
        "limit": cfg.limit,
        "protocol": cfg.protocol.resolved(adapter.info.input_size),
        "seed": cfg.protocol.seed,
        "batch_size": cfg.batch_size,
        "compute_chunk": chunk,
        "device": str(device),
        "wall_time_s": round(wall, 3),
        "images_per_s": round(len(records) / wall, 3) if wall > 0 else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    results.write_csv(out / "per_image.csv", per_image)
    results.write_csv(out / "summary.csv", pd.DataFrame([summary]))
    results.write_json(out / "meta.json", meta)
    return {"summary": summary, "meta": meta, "out": str(out)}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
