"""`protobench evaluate` as a library call: load, check, run, write the result files."""

from __future__ import annotations

import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from protobench import options
from protobench.core.protocol import EvalProtocol
from protobench.run.forward import AUTOCAST_DTYPES
from protobench.data.imagelist import MAX_IMAGE_PIXELS, check_max_pixels
from protobench.run.defaults import run_context
from protobench.run.devices import check_device_name, resolve_device
from protobench.run.watch import NoProgress, Progress, RunningMean
from protobench.run import partpass
from protobench.run.partpass import DEFAULT_METRICS, PartSettings, check_metrics
from protobench.errors import DataError, DataWarning, Interrupted, OptionError, OutputError, ProtobenchError
from protobench.lock import holds_out

MAX_BATCH, MAX_WORKERS = 65536, 256  # far above useful; a typo must not fork a process per image

RESULT_FILES = ("per_image.csv", "per_prototype.csv", "convergence.csv", "summary.csv", "meta.json")


@dataclass
class EvaluateConfig:
    ckpt: str
    data: str
    out: str
    adapter: str = "auto"  # a registry name, pkg.module:Class, or auto (told from the checkpoint)
    adapter_options: dict[str, Any] = field(default_factory=dict)
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    batch_size: int | None = None  # None: forward.auto_batch_size (32 CPU, 256 GPU with back-off)
    device: str = "auto"
    workers: int | None = None  # None: 0 on the CPU, up to 8 decoding processes feeding a GPU
    limit: int | None = None
    overwrite: bool = False
    dataset: str | None = None  # a layout name (protobench.data.layouts.LAYOUTS); None: detect from --data
    split: str | None = None  # None: the layout's evaluation split
    strict: bool = False  # an undecodable image is an error instead of a skip
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are skipped unread (0: no limit)
    resume: bool = False  # continue the interrupted run in `out`
    name: str | None = None  # the model's name in the tables [default: the checkpoint's file stem]
    precision: str = "fp32"  # fp32, tf32, bf16 or fp16; see forward.Runtime
    distance: str = "float64"  # the prototype distance: float64, or float32 as the originals (docs/adapters.md)
    compile: bool = False  # torch.compile the model's forward
    chunk_threads: int = 1  # CPU: chunks measured side by side, one thread each (run/chunks.py); 1: one at a time
    command: str | None = None  # meta.json's command [default: protobench and this process's arguments]
    metrics: tuple[str, ...] = DEFAULT_METRICS  # the suites to measure (--metrics); see run.partpass
    parts: PartSettings = field(default_factory=PartSettings)  # consistency and stability's parameters
    source: dict[str, Any] = field(default_factory=dict)  # download, published accuracy, Hub record (run/sources.py)

    def check(self) -> None:
        """OptionError for any option out of its range: before the output directory is touched."""
        self.metrics = check_metrics(self.metrics)
        self.parts.check()
        self.protocol.check()
        check_device_name(self.device)
        options.optional_integer("--batch-size", self.batch_size, 1, MAX_BATCH)
        options.optional_integer("--workers", self.workers, 0, MAX_WORKERS)
        options.optional_integer("--chunk-threads", self.chunk_threads, 1, MAX_WORKERS)
        options.optional_integer("--limit", self.limit, 1)
        check_max_pixels(self.max_image_pixels)
        options.choice("precision", self.precision, tuple(AUTOCAST_DTYPES))
        options.choice("distance", self.distance, ("float64", "float32"))  # core.precision.DISTANCES, torch-free


def load_adapter(name: str, ckpt: str, options: dict[str, Any], device, distance: str = "float64"):
    from protobench.models.lookup import get_adapter

    return get_adapter(name).load(ckpt, **options).set_distance(distance).to(device)


def load_dataset(data: str, info, layout: str | None = None, split: str | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS):
    """(dataset, its image paths): the layout registry (protobench.data.layouts) decides what `data` is."""
    from protobench.data.layouts import open_dataset

    dataset = open_dataset(data, info, layout, split, max_pixels)
    return dataset, dataset.paths


@holds_out(lambda cfg, *_, **__: cfg.out)  # one run writing cfg.out at a time
def evaluate(cfg: EvaluateConfig, progress: Progress | None = None, *, adapter=None, open_data=None,
             on_adapter=None) -> dict[str, Any]:
    """Run the benchmark on one model and write per_image.csv, summary.csv and meta.json to cfg.out.
    `adapter`: in memory already, instead of cfg.ckpt; `open_data(model info)`: the dataset in memory (items
    (image, label, index); `paths`), or None for cfg.data; `on_adapter` hears the adapter the run uses.

    Per-image results are appended to the partial log every batch, so an interrupted run continues with
    cfg.resume and ends with the same files as an uninterrupted one (`progress.on_outcome`, if any, sees tensors).
    """
    from protobench import files
    from protobench.run import distributed, resume as runstate, results, sources
    from protobench.data.imagelist import random_subset

    cfg.check()
    results.check_columns(cfg.metrics)  # a plugin metric named like one of our columns: refused before any work
    out = Path(cfg.out)
    world = distributed.world()
    device = resolve_device(cfg.device, world.local_rank if world.size > 1 else None)
    distributed.init(world, device)
    status = runstate.check_out(out, cfg.overwrite, cfg.resume)  # 'empty', 'partial' or 'complete'
    if world.main:
        runstate.directory(out).note_fresh(cfg.resume, status)
    files.check_writable_dir(out)
    adapter = adapter.to(device) if adapter else load_adapter(cfg.adapter, sources.prepare(cfg), cfg.adapter_options,
                                                              device, cfg.distance)  # hf:// -> the cache
    if on_adapter is not None:
        on_adapter(adapter)
    check_selection(cfg.protocol, adapter)
    context = run_context(adapter.device, adapter.info.input_size, batch_size=cfg.batch_size, workers=cfg.workers,
                          precision=cfg.precision, distance=cfg.distance, compile=cfg.compile, world=world,
                          threads=cfg.chunk_threads)
    dataset = open_data(adapter.info) if open_data is not None else None
    dataset, paths = (dataset, dataset.paths) if dataset is not None else \
        load_dataset(cfg.data, adapter.info, cfg.dataset, cfg.split, cfg.max_image_pixels)
    indices = random_subset(len(dataset), cfg.limit, cfg.protocol.seed)
    keypoints, passes, parts_identity = partpass.prepare(cfg.metrics, cfg.parts, adapter, dataset, indices, cfg.data,
                                                          cfg.protocol.seed)  # when a metric needs them
    identity = {**run_identity(cfg, adapter, dataset, context), **parts_identity}
    distributed.barrier(world)  # every rank has looked at `out` before rank 0 changes it
    if status == "empty":
        if world.main:
            runstate.clear(out)
            runstate.start(out, identity)
    else:
        runstate.check_identity(runstate.recorded_identity(out), identity, out)
        if status == "complete":
            return runstate.load_finished(out) if world.main else None
    distributed.barrier(world)
    timing = _run_remaining(cfg, adapter, dataset, paths, indices, out,
                            (progress or NoProgress()) if world.main else NoProgress(), context, passes)
    distributed.barrier(world)  # every shard is on disk before rank 0 merges them
    if not world.main:
        return None
    return _finish(cfg, adapter, dataset, indices, out, identity=identity, resumed=status == "partial",
                   timing=timing, context=context, keypoints=keypoints)


def check_selection(protocol: EvalProtocol, adapter) -> None:
    """gt-protos needs prototypes of every class; found now rather than at the first batch."""
    if protocol.select == "gt-protos" and bool((adapter.prototype_class_identity.sum(dim=0) <= 0).any()):
        raise OptionError("--select gt-protos: some of the model's classes have no prototypes; "
                          "use --select top-proto")


def run_identity(cfg: EvaluateConfig, adapter, dataset, context) -> dict[str, Any]:
    """What makes two runs the same run: --resume refuses to continue a run that differs in any of it."""
    from protobench.run.provenance import dataset_fingerprint_of
    from protobench.run.rundir import run_identity as common

    return {
        **common(adapter, cfg.adapter, cfg.adapter_options, cfg.ckpt, dataset, getattr(dataset, "split", None),
                 context.device.type),
        "dataset_fingerprint": dataset_fingerprint_of(dataset, cfg.data),
        "limit": cfg.limit,
        "protocol": cfg.protocol.resolved(adapter.info.input_size),
        "precision": context.runtime.precision,  # bf16 numbers differ from fp32 ones: never mixed in one run
        "distance": cfg.distance,  # float32 (the originals' arithmetic) moves maps near pushed prototypes
        "max_image_pixels": cfg.max_image_pixels,  # decides which images are skipped
    }


def _run_remaining(cfg, adapter, dataset, paths, indices, out, progress, context, passes) -> tuple[float, int]:
    """Evaluate the images the partial logs lack (this rank's share of them), appending each
    batch; (wall time, images evaluated)."""
    from protobench.run import benchmark, resume as runstate
    from protobench.data.imagelist import Subset

    records, skipped = runstate.read_partial(out)
    done = {r["index"] for r in records} | set(skipped)
    if done and max(done) >= len(paths):
        raise ProtobenchError(f"{out}: the partial log names images the dataset does not have (damaged): "
                              "use --overwrite to start again")
    report_skipped(skipped, dataset, cfg.strict)
    todo = context.world.shard([i for i in indices if i not in done])
    count = [len(indices) - len(todo), 0, 0]  # images done, of which evaluated by this process; skips too
    pac = RunningMean()

    def on_batch(rows: list[dict], bad: list[int]) -> None:
        log.append(rows, bad)  # first: whatever happens next, this batch is kept
        count[0] += len(rows) + len(bad)
        count[1] += len(rows)
        count[2] += len(rows) + len(bad)
        report_skipped(bad, dataset, cfg.strict)
        pac.add(r.get("PAC") for r in rows)  # none without the attack (--metrics consistency)
        progress.update(count[2], {"PAC": pac.value} if pac.n else {})
        getattr(progress, "rows", lambda *_: None)(rows, bad)  # a display that also keeps rows (report.kept)

    started = time.perf_counter()
    progress.start(len(todo), model_name(cfg))
    try:
        with runstate.PartialLog(out, context.world.rank) as log:
            benchmark.run(adapter, Subset(dataset, todo), paths, cfg.protocol, context, on_batch=on_batch,
                          passes=passes, on_outcome=getattr(progress, "on_outcome", None))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after {count[0]} of {len(indices)} images; the partial results in {out} "
                          "are kept: rerun the same command with --resume to continue") from None
    except OutputError as err:  # e.g. the disk filled up: what is on disk is still a valid partial run
        raise OutputError(f"{err} ({count[0]} of {len(indices)} images are kept in {out}: "
                          "rerun with --resume once it can be written)") from None
    finally:
        progress.stop()
    return time.perf_counter() - started, count[1]


def report_skipped(indices: list[int], dataset, strict: bool) -> None:
    """Warn about each unusable image and why, or stop on the first one under --strict."""
    from protobench.data.imagelist import skip_reason

    for i in indices:
        if strict:
            raise DataError(f"cannot use image {skip_reason(dataset, i)} (fix or remove it, or drop --strict "
                            "to skip it)")
        warnings.warn(f"skipped image {skip_reason(dataset, i)}", DataWarning, stacklevel=2)


def model_name(cfg: EvaluateConfig) -> str:
    return cfg.name or Path(cfg.ckpt).stem


def _finish(cfg, adapter, dataset, indices, out, *, identity, resumed, timing, context, keypoints) -> dict[str, Any]:
    """The result files from the partial log (subset order), written atomically; timing: (wall, evaluated)."""
    import pandas as pd

    from protobench.run import convergence, resume as runstate, results, sanity, seeds, sources

    records, skipped = runstate.read_partial(out)
    by_index = {r["index"]: r for r in reversed(records)}  # first record of an index wins
    records = [by_index[i] for i in indices if i in by_index]
    skipped = sorted(set(skipped) & set(indices))
    if not records:
        raise DataError(f"none of the {len(indices)} images in {cfg.data} could be decoded")
    per_image = pd.DataFrame(records, columns=results.per_image_columns(cfg.metrics))
    per_prototype = partpass.model_table(per_image, cfg.metrics, adapter, keypoints, cfg.parts.threshold)
    summary = seeds.summarize(per_image, records, model_name(cfg), cfg.protocol.seed, cfg.metrics, per_prototype)
    meta = build_meta(cfg, adapter, dataset, identity, len(records), skipped, *timing, context)
    meta.update(resumed=resumed, **sources.report(cfg.source, summary))  # incl. the published-accuracy check
    meta["warnings"] = sanity.run_warnings(summary, adapter.info.num_classes, keypoints, adapter.info.input_size)
    try:
        results.write_csv(out / "per_image.csv", per_image)
        if per_prototype is not None:
            results.write_csv(out / "per_prototype.csv", per_prototype)
        results.write_csv(out / "summary.csv", pd.DataFrame([summary]))
        convergence.write(out, records)  # the attack's trace, per step (docs/metrics.md, Attack strength)
        results.write_json(out / "meta.json", meta)  # last: its presence marks the run complete
        runstate.finish(out)
    except OutputError as err:  # the partial log is untouched until meta.json is written
        raise OutputError(f"{err} (every image's result is kept in {out}: rerun with --resume once it can be "
                          "written)") from None
    return {"summary": summary, "meta": meta, "out": str(out)}


def build_meta(cfg, adapter, dataset, identity, n_records, skipped, wall, evaluated, context) -> dict[str, Any]:
    import torch

    from protobench import __version__
    from protobench.run import provenance

    return {
        **identity,
        "protobench_version": __version__,
        "git": provenance.git_commit(),
        "torch_version": torch.__version__,
        "torchvision_version": provenance.package_version("torchvision"),
        "python_version": platform.python_version(),
        "command": cfg.command or " ".join(["protobench", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_name(cfg),
        "model_info": adapter.info.__dict__,
        "checkpoint": str(Path(cfg.ckpt).resolve()) if Path(cfg.ckpt).exists() else cfg.ckpt,
        "dataset": str(Path(cfg.data).resolve()) if Path(cfg.data).exists() else cfg.data,
        "dataset_images": len(dataset), "classes": [str(c) for c in getattr(dataset, "classes", [])],
        "evaluated_images": n_records,
        "skipped_images": [dataset.paths[i] for i in skipped],
        "seed": cfg.protocol.seed,
        **context.record(),  # device, batch size, workers, runtime, processes (torchrun ranks)
        **provenance.determinism(),
        "wall_time_s": round(wall, 3),  # this process's share when resumed
        "images_per_s": round(evaluated / wall, 3) if wall > 0 else None,
    }
