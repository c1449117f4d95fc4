"""`protobench.evaluate`: the benchmark of a model in memory or on disk, on data in memory or on disk; and
`run_evaluation`, the one way from options to results that it and `protobench evaluate` share."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from protobench.api.calls import public

if TYPE_CHECKING:
    from protobench.api.data import Source
    from protobench.api.model import Model
    from protobench.api.results import Results

@contextmanager
def run_directory(out: str | Path | None) -> Iterator[Path]:
    """`out`, or a temporary directory removed afterwards (the results are read into memory first)."""
    if out is not None:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="protobench-run-") as tmp:
        yield Path(tmp) / "run"


def progress_display(progress: Any) -> Any:
    """True: a bar on stderr; False or None: nothing; else the caller's object (start / update / stop)."""
    if progress is True:
        from protobench.api.progress import RichProgress

        return RichProgress()
    return progress or None


def suites(metrics: str | Sequence[str]) -> tuple[str, ...]:
    return tuple(metrics.split(",")) if isinstance(metrics, str) else tuple(metrics)


def make_protocol(name: str, seed: int, overrides: dict[str, Any]) -> Any:
    """The named protocol with the given fields overridden; an unknown keyword is an OptionError."""
    from dataclasses import fields

    from protobench.core.protocol import EvalProtocol
    from protobench.errors import OptionError

    known = [f.name for f in fields(EvalProtocol) if f.name not in ("name", "seed")]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise OptionError(f"evaluate has no option {unknown[0]!r}; the protocol's options are {', '.join(known)}")
    return EvalProtocol.make(name, seed=seed, **overrides)


@public
def evaluate(model: Any, data: Any = None, *, protocol: Any = "default", metrics: str | Sequence[str] = "misalignment",
             limit: int | None = None, batch_size: int | None = None, device: str | None = None, seed: int = 0,
             progress: Any = True, out: str | Path | None = None, overwrite: bool = False, resume: bool = False,
             name: str | None = None, precision: str = "fp32", dataset: str | None = None,
             split: str | None = None, workers: int | None = None, chunk_threads: int = 1,
             **protocol_options: Any) -> Results:
    """Benchmark a model: attack the pixels outside each prototype's region and measure the explanation.

    Args:
        model: a Model (protobench.load / protobench.wrap), a torch module (wrapped), or a checkpoint path.
        data: a dataset directory (any layout the CLI reads), a torch Dataset of (image, label), or a
            DataLoader (read through its dataset; an item is identified by its index in it, so its order
            changes nothing: docs/python.md). None: the demo data, for the demo model.
        protocol: 'default', 'reference' or 'protovit' (or an EvalProtocol); `protocol_options` override
            its fields: attack, eps, step, steps, select, margin, region, plc, clip.
        metrics: the suites to measure ('misalignment', 'consistency', 'stability', a plugin's).
        limit: a fixed-seed random subset of this many images. batch_size, workers, chunk_threads: as the
            CLI's options (chunk_threads: CPU chunks measured side by side, docs/performance.md).
        device: 'cpu', 'cuda[:N]'; None: where the model is (a checkpoint: a GPU when there is one).
        seed: the attack's random start and the subset.
        progress: a progress bar on stderr. out: also keep the CLI's files there (same rules as --out).

    Returns:
        Results: per_image, summary, per_prototype (DataFrames), meta; save() and report(). Under torchrun,
        the processes other than rank 0 get None (rank 0 writes the results).

    The model and torch's process state are left as they were found (docs/python.md, In a training loop).
    """
    from protobench.api.results import Results
    from protobench.core.protocol import EvalProtocol
    from protobench.errors import OptionError

    if isinstance(model, (list, tuple)):
        raise OptionError("protobench.evaluate takes one model: call it once per model")
    proto = protocol if isinstance(protocol, EvalProtocol) else make_protocol(protocol, seed, protocol_options)
    with run_directory(out) as run_dir:
        ran = run_evaluation(model, data, proto, out=run_dir, progress=progress_display(progress), limit=limit,
                             batch_size=batch_size, device=device, overwrite=overwrite, resume=resume, name=name,
                             precision=precision, metrics=suites(metrics), dataset=dataset, split=split,
                             workers=workers, chunk_threads=chunk_threads, command="protobench.evaluate (Python)")
        if ran.answer is None:  # a torchrun rank other than 0
            return None  # type: ignore[return-value]
        results = Results.load(run_dir)
    results.dir = Path(out) if out is not None else None
    results.source = (ran.model, ran.source)
    return results


@dataclass
class Evaluation:
    """What run_evaluation returns."""

    answer: dict[str, Any] | None  # one model: summary, meta, out; several: summaries, out, failed; None: a
    # torchrun rank other than 0 (rank 0 writes)
    model: Model | None = None  # the model evaluated, in memory (one model): Results.report re-runs it
    source: Source | None = None  # its data


def run_evaluation(model: Any, data: Any, protocol: Any, *, out: str | Path, progress: Any = None,
                   adapter: str | Sequence[str] = "auto", adapter_options: dict[str, Any] | None = None,
                   device: str | None = None, workers: int | None = None, name: str | None = None,
                   dataset: str | None = None, split: str | None = None, source: dict[str, Any] | None = None,
                   **settings: Any) -> Evaluation:
    """The evaluation behind `protobench.evaluate` and `protobench evaluate`: both parse their options into
    this call, which builds the run's configuration, runs it (protobench.run.evaluate; several models:
    protobench.run.sweep) and leaves the model and torch's process state as it found them (api/state.py).

    Args:
        model: a Model, an adapter or a torch module (wrapped), in memory; a checkpoint path (or hf://
            address), loaded by the run once the options and the output directory are checked; or a list
            of checkpoint paths, each evaluated into its own folder of `out`.
        data: a dataset directory or protoshapes[:split], a Dataset or a DataLoader (api/data.py); None: the
            demo data, for the demo model. dataset, split: the directory's layout and split.
        protocol: the EvalProtocol. out: the result directory. progress: run/watch.Progress, or None.
        adapter, adapter_options: how to read a checkpoint (--adapter, --adapter-option): one adapter for
            every checkpoint of a list, or one each.
        device: None: where an in-memory model is; auto for a checkpoint. workers: None: the run's default
            (0 for a Dataset in memory).
        source: where the checkpoint came from (the catalogue's record, --download): meta.json's `source`.
        **settings: EvaluateConfig's other fields (limit, batch_size, precision, distance, strict, ...).
    """
    from protobench.api.data import source as data_source
    from protobench.api.model import Model, as_model
    from protobench.api.state import preserved
    from protobench.demo import is_demo_checkpoint
    from protobench.errors import OptionError
    from protobench.run.evaluate import EvaluateConfig
    from protobench.run.evaluate import evaluate as run_one
    from protobench.run.sweep import evaluate_models, pair_adapters

    on_disk = isinstance(model, (str, Path, list, tuple))
    handle = None if on_disk else as_model(model)
    ckpts = [str(m) for m in (model if isinstance(model, (list, tuple)) else [model])] if on_disk else []
    if on_disk and not ckpts:
        raise OptionError("give the model to evaluate: a Model, a module or a checkpoint path")
    models = pair_adapters(ckpts, [adapter] if isinstance(adapter, str) else list(adapter), "auto")
    demo = data is None and (handle.is_demo if handle else is_demo_checkpoint(ckpts[0]))  # the demo data is its default
    src = data_source(data, demo, dataset, split)
    loaded: list[Any] = []  # the adapter the run read from a checkpoint

    def release() -> None:  # after the run: a model read from a file leaves no GPU memory behind
        for read in loaded:
            read.to("cpu")

    with preserved(handle.module if handle else None, handle.release if handle else release):
        in_memory = handle.adapter if handle else None
        cfg = EvaluateConfig(
            ckpt=handle.identity if handle else models[0][0], data=src.data, out=str(out),
            adapter=handle.spec if handle else models[0][1],
            adapter_options=handle.options if handle else dict(adapter_options or {}), protocol=protocol,
            device=device or (str(in_memory.device) if handle else "auto"), dataset=src.layout, split=src.split,
            workers=0 if workers is None and src.given is not None else workers,
            name=handle.name if name is None and handle is not None and not handle.ckpt else name,
            source=dict(source or {}), **settings)
        if len(models) > 1:
            return Evaluation(evaluate_models(cfg, models, progress))
        answer = run_one(cfg, progress, adapter=in_memory, open_data=src.open, on_adapter=loaded.append)
    if handle is None and loaded:
        handle = Model(loaded[0], Path(cfg.ckpt).stem, ckpt=cfg.ckpt, spec=cfg.adapter, options=cfg.adapter_options)
    return Evaluation(answer, handle, src)
