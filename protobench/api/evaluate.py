"""`protobench.evaluate`: the benchmark of a model in memory or on disk, on data in memory or on disk,
through the same run as `protobench evaluate` (protobench.run.evaluate)."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from protobench.api.calls import public

if TYPE_CHECKING:
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
             split: str | None = None, workers: int | None = None, **protocol_options: Any) -> Results:
    """Benchmark a model: attack the pixels outside each prototype's region and measure the explanation.

    Args:
        model: a Model (protobench.load / protobench.wrap), a torch module (wrapped), or a checkpoint path.
        data: a dataset directory (any layout the CLI reads), a torch Dataset of (image, label), or a
            DataLoader (read through its dataset; an item is identified by its index in it, so its order
            changes nothing: docs/python.md). None: the demo data, for the demo model.
        protocol: 'default', 'reference' or 'protovit' (or an EvalProtocol); `protocol_options` override
            its fields: attack, eps, step, steps, select, margin, region, plc, clip.
        metrics: the suites to measure ('misalignment', 'consistency', 'stability', a plugin's).
        limit: a fixed-seed random subset of this many images. batch_size, workers: as the CLI's options.
        device: 'cpu', 'cuda[:N]'; None: where the model is. seed: the attack's random start and the subset.
        progress: a progress bar on stderr. out: also keep the CLI's files there (same rules as --out).

    Returns:
        Results: per_image, summary, per_prototype (DataFrames), meta; save() and report().

    The model and torch's process state are left as they were found (docs/python.md, In a training loop).
    """
    from protobench.api.data import Items, source
    from protobench.api.model import as_model
    from protobench.api.results import Results
    from protobench.api.state import preserved
    from protobench.core.protocol import EvalProtocol
    from protobench.run.evaluate import EvaluateConfig
    from protobench.run.evaluate import evaluate as run_evaluate

    handle = as_model(model)
    proto = protocol if isinstance(protocol, EvalProtocol) else make_protocol(protocol, seed, protocol_options)
    src = source(data, handle, dataset, split)
    with preserved(handle.module, handle.release), run_directory(out) as run_dir:
        adapter = handle.adapter
        cfg = EvaluateConfig(ckpt=handle.identity, data=src.data, out=str(run_dir), adapter=handle.spec,
                             adapter_options=handle.options, protocol=proto, batch_size=batch_size,
                             device=device or str(adapter.device), limit=limit, overwrite=overwrite, resume=resume,
                             workers=0 if workers is None and isinstance(src.dataset, Items) else workers,
                             name=name if name is not None else (None if handle.ckpt else handle.name),
                             precision=precision, metrics=suites(metrics), dataset=src.layout, split=src.split,
                             command="protobench.evaluate (Python)")
        run_evaluate(cfg, progress_display(progress), adapter=adapter, dataset=src.dataset)
        results = Results.load(run_dir)
    results.dir = Path(out) if out is not None else None
    results.source = (handle, src)
    return results
