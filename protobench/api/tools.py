"""`protobench.compare` and `protobench.finetune`: the CLI's commands of those names, returning objects."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from protobench.api.calls import public
from protobench.api.evaluate import progress_display
from protobench.errors import OptionError

if TYPE_CHECKING:
    import pandas as pd

    from protobench.api.model import Model
    from protobench.api.results import Results


@dataclass
class Comparison:
    """`protobench compare`'s answer: one row per model and metric, notes, and the verdict."""

    table: pd.DataFrame  # model, metric, base, new, delta, tolerance, status ('pass', 'FAIL', 'n/a')
    notes: list[str]

    @property
    def regressions(self) -> int:
        """How many metrics got worse by more than their tolerance."""
        return int((self.table["status"] == "FAIL").sum())

    @property
    def verdict(self) -> str:
        """'ok' or 'regressed' (the CLI's exit code 0 or 1)."""
        return "regressed" if self.regressions else "ok"

    def markdown(self) -> str:
        from protobench.run.compare import to_markdown

        return to_markdown(self.table, self.notes)


def _tolerances(tol: Mapping[str, float] | Sequence[str] | None) -> dict[str, float]:
    from protobench.run.compare import parse_tolerances

    if tol is None:
        return parse_tolerances([])
    if isinstance(tol, str):
        raise OptionError("compare's tol is a dict such as {'PAC': 0.5} (or a list of 'PAC=0.5')")
    pairs = [f"{k}={v}" for k, v in tol.items()] if isinstance(tol, Mapping) else list(tol)
    return parse_tolerances(pairs)


@public
def compare(base: Any, new: Any, tol: Mapping[str, float] | Sequence[str] | None = None,
            force: bool = False) -> Comparison:
    """Is any metric of `new` worse than `base` by more than its tolerance?

    Args:
        base, new: Results, or result directories (or their summary.csv).
        tol: absolute tolerances by metric name or group, e.g. {'PAC': 0.5, 'acc': 0.01}; the rest keep their
            defaults (docs/ci.md).
        force: compare runs of different protocols or datasets anyway.
    """
    from protobench.run.compare import compare as run_compare

    tolerances = _tolerances(tol)
    with ExitStack() as stack:
        paths = [_on_disk(item, stack) for item in (base, new)]
        table, notes = run_compare(paths[0], paths[1], tolerances, force)
    return Comparison(table, notes)


def _on_disk(item: Any, stack: ExitStack) -> str:
    from protobench.api.results import Results

    if not isinstance(item, Results):
        return str(item)
    if item.dir is not None:
        return str(item.dir)
    where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="protobench-compare-"))) / "run"
    item.write_files(where)
    return str(where)


@dataclass
class Finetuned:
    """`protobench finetune`'s outputs: the fine-tuned model, its training log, and the evaluations
    before and after (None without evaluation data)."""

    model: Model
    out: Path
    log: pd.DataFrame
    before: Results | None
    after: Results | None


@public
def finetune(model: Any = None, data: Any = None, *, out: str | Path | None = None, eval_data: str | None = None,
             evaluate: bool = True, device: str = "auto", resume: bool = False, overwrite: bool = False,
             progress: bool = True, dataset: str | None = None, split: str | None = None,
             **settings: Any) -> Finetuned:
    """Fine-tune a ProtoPNet-family model so its explanations stay put (docs/compensation.md).

    Args:
        model: a checkpoint path, a Model, or a module (written to a temporary protobench file first);
            None: the demo model. data: a dataset directory (its train split); None: the demo's.
        out: the run directory [protobench-results/finetune-<name>]. eval_data: evaluate before and after
            on this (the demo test split for the demo). **settings: TrainSettings' fields (epochs,
            last_epochs, lambda_align, align_adversarial as adversarial, lr_*, batch_size, seed, push...).
    """
    import pandas as pd

    from protobench.api.model import Model, as_model, load
    from protobench.api.results import Results
    from protobench.train.finetune import FinetuneConfig
    from protobench.train.finetune import finetune as run_finetune
    from protobench.train.settings import TrainSettings

    try:
        train = TrainSettings(**settings)
    except TypeError as err:
        raise OptionError(f"finetune: {err}; its settings are TrainSettings' fields (docs/compensation.md)") from None
    with tempfile.TemporaryDirectory(prefix="protobench-finetune-") as tmp:
        ckpt, adapter, options = _checkpoint(model, Path(tmp), as_model, Model)
        cfg = FinetuneConfig(ckpt=ckpt, data=None if data is None else str(data), out=None if out is None else str(out),
                             adapter=adapter, adapter_options=options, dataset=dataset, split=split,
                             eval_data=eval_data, evaluate=evaluate, settings=train, device=device, resume=resume,
                             overwrite=overwrite)
        result = run_finetune(cfg, *_bars(progress))
    where = Path(result["out"])
    before, after = (Results.load(where / name) if (where / name / "meta.json").is_file() else None
                     for name in ("before", "after"))
    return Finetuned(load(result["model"], device=device), where, pd.DataFrame(result["log"]), before, after)


def _bars(progress: bool) -> tuple[Any, Any]:
    """(training progress, evaluation progress) on stderr, or none."""
    if not progress:
        return None, None
    from protobench.run.progress import TrainProgress

    return TrainProgress(), progress_display(True)


def _checkpoint(model: Any, tmp: Path, as_model: Any, model_class: type) -> tuple[str | None, str, dict[str, Any]]:
    """(checkpoint path, adapter, options) of the model to fine-tune; a module in memory is saved first."""
    if model is None or isinstance(model, (str, Path)):
        return (None if model is None else str(model)), "auto", {}
    handle = model if isinstance(model, model_class) else as_model(model)
    if handle.ckpt is not None:
        return handle.ckpt, handle.spec, handle.options
    path = tmp / f"{handle.name}.safetensors"
    handle.adapter.save(str(path))
    return str(path), "auto", {}
