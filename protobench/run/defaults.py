"""A run's defaults, resolved once, here: the built-in demo when no model is given, the output directory,
whether the report is drawn, the data to evaluate a fine-tuned model on, and how this process runs the
benchmark loop (`run_context`). `protobench evaluate`, `protobench finetune`, the report's re-run and the
Python API (protobench.api) all take them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from protobench.errors import OptionError, ProtobenchError

RESULTS = Path("protobench-results")  # where results go unless --out says otherwise


@dataclass(frozen=True)
class EvaluateDefaults:
    ckpts: tuple[str, ...]  # the checkpoints to evaluate, in order
    data: str
    out: str  # one model's result directory, or the directory of a multi-model run
    report: bool  # draw the report after the run
    demo: bool  # the built-in demo model on the demo data
    limit: int | None = None  # --limit: as given, or the demo's subset (None: every image)


def evaluate_defaults(ckpts: Sequence[str], data: str | None, out: str | None,
                      report: bool | None, limit: int | None = None) -> EvaluateDefaults:
    """No checkpoint and no data (or the demo data): the demo model, into protobench-results/demo, with its
    report, on DEMO_LIMIT images unless `limit` says otherwise. Otherwise both are needed; OUT is
    protobench-results/<ckpt name> (models for several); no report."""
    from protobench.demo import DEMO_DATA, DEMO_LIMIT, demo_checkpoint, is_demo_data

    demo = not ckpts and (data is None or is_demo_data(data))
    if demo:
        ckpts, data = [demo_checkpoint()], data or DEMO_DATA
        out, report = out or str(RESULTS / "demo"), True if report is None else report
        limit = DEMO_LIMIT if limit is None else limit
    if not ckpts or data is None:
        raise OptionError("give both --ckpt and --data, or neither to run the built-in demo")
    name = Path(ckpts[0]).stem if len(ckpts) == 1 else "models"
    return EvaluateDefaults(tuple(str(c) for c in ckpts), str(data), str(out or RESULTS / name), bool(report), demo,
                            limit)


def evaluate_data(data: object, demo_model: bool) -> object:
    """The data of an evaluation from Python: as given, or the demo data for the demo model."""
    from protobench.demo import DEMO_DATA
    from protobench.errors import DataError

    if data is not None:
        return data
    if not demo_model:
        raise DataError("give the data to evaluate on: a dataset directory, a Dataset or a DataLoader")
    return DEMO_DATA


@dataclass(frozen=True)
class FinetuneDefaults:
    ckpt: str
    data: str  # the training data
    out: str
    eval_data: str | None  # evaluated before and after; None: no evaluation


def finetune_defaults(ckpt: str | None, data: str | None, split: str | None, out: str | None,
                      eval_data: str | None, evaluate: bool) -> FinetuneDefaults:
    """No checkpoint: the demo model, trained on the demo's train split and evaluated on its test split,
    into protobench-results/finetune-demo. A checkpoint needs its training data; OUT is
    protobench-results/finetune-<ckpt name>; no evaluation unless eval_data is given."""
    from protobench.demo import DEMO_DATA, DEMO_TEST, DEMO_TRAIN, demo_checkpoint

    demo = ckpt is None
    if demo and data not in (None, DEMO_DATA, DEMO_TRAIN):
        raise ProtobenchError("give --ckpt with --data (without both, finetune runs the built-in demo)")
    if not demo and data is None:
        raise ProtobenchError("give --data, the dataset to fine-tune on (e.g. a CUB-200-2011 directory)")
    data = data or DEMO_TRAIN
    if data == DEMO_DATA:
        data = f"{DEMO_DATA}:{split or 'train'}"
    ckpt = ckpt or demo_checkpoint()
    out = out or str(RESULTS / f"finetune-{'demo' if demo else Path(ckpt).stem}")
    eval_data = eval_data or (DEMO_TEST if data == DEMO_TRAIN else None)
    return FinetuneDefaults(ckpt, data, out, eval_data if evaluate else None)


def run_context(device: Any, input_size: int, *, batch_size: int | None = None, workers: int | None = None,
                precision: str = "fp32", distance: str = "float64", compile: bool = False, world: Any = None,
                threads: int = 1) -> Any:
    """The RunContext (run/context.py) of an evaluation of a model of `input_size` px on `device`: the run
    and the report's re-run of its images resolve it here, from the same settings, so that both compute
    the same numbers. With the float32 distance the CPU calls the model one image at a time, as the
    paper's code: float32's cancellation shows bits a chunk's other images move. `threads`: CPU chunks
    measured side by side (run/chunks.py)."""
    from protobench.run.context import RunContext

    chunk = 1 if distance == "float32" and device.type == "cpu" else None
    return RunContext.resolve(device, input_size, batch_size=batch_size, chunk=chunk, workers=workers,
                              precision=precision, compile=compile, world=world, threads=threads)
