"""`protobench.finetune`: the CLI's command of that name, returning the fine-tuned model and its results."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protobench.api.calls import public
from protobench.errors import OptionError

if TYPE_CHECKING:
    import pandas as pd

    from protobench.api.model import Model
    from protobench.api.results import Results


@dataclass
class Finetuned:
    """`protobench finetune`'s outputs: the fine-tuned model's file, its training log, and the evaluations
    before and after (None without evaluation data)."""

    path: Path  # OUT/model.safetensors
    out: Path
    log: pd.DataFrame
    before: Results | None
    after: Results | None
    device: str = "auto"

    @property
    def model(self) -> Model:
        """The fine-tuned model, loaded from its file."""
        from protobench.api.model import load

        return load(self.path, device=self.device)


@public
def finetune(model: Any = None, data: Any = None, *, out: str | Path | None = None, eval_data: str | None = None,
             evaluate: bool = True, device: str = "auto", resume: bool = False, overwrite: bool = False,
             progress: Any = True, dataset: str | None = None, split: str | None = None, adapter: str = "auto",
             adapter_options: dict[str, Any] | None = None, max_image_pixels: int | None = None,
             **settings: Any) -> Finetuned:
    """Fine-tune a ProtoPNet-family model so its explanations stay put (docs/compensation.md).

    Args:
        model: a checkpoint path, a Model, or a module (written to a temporary protobench file first);
            None: the demo model. data: a dataset directory (its train split); None: the demo's.
        out: the run directory [protobench-results/finetune-<name>]. eval_data: evaluate before and after
            on this (the demo test split for the demo). progress: bars on stderr; or a pair (training,
            evaluation) of progress objects (protobench.run.watch.Progress).
        adapter, adapter_options: how to read a checkpoint path (`--adapter`, `--adapter-option`).
        **settings: TrainSettings' fields (epochs, last_epochs, lambda_align, adversarial, lr_*, batch_size,
            seed, push...).
    """
    import pandas as pd

    from protobench.api.results import Results
    from protobench.train.finetune import FinetuneConfig
    from protobench.train.finetune import finetune as run_finetune
    from protobench.train.settings import TrainSettings

    try:
        train = TrainSettings(**settings)
    except TypeError as err:
        raise OptionError(f"finetune: {err}; its settings are TrainSettings' fields (docs/compensation.md)") from None
    limit = {} if max_image_pixels is None else {"max_image_pixels": max_image_pixels}
    with tempfile.TemporaryDirectory(prefix="protobench-finetune-") as tmp:
        ckpt, adapter, options = _checkpoint(model, Path(tmp), adapter, adapter_options or {})
        cfg = FinetuneConfig(ckpt=ckpt, data=None if data is None else str(data), out=None if out is None else str(out),
                             adapter=adapter, adapter_options=options, dataset=dataset, split=split,
                             eval_data=eval_data, evaluate=evaluate, settings=train, device=device, resume=resume,
                             overwrite=overwrite, **limit)
        result = run_finetune(cfg, *_bars(progress))
    where = Path(result["out"])
    before, after = (Results.load(where / name) if (where / name / "meta.json").is_file() else None
                     for name in ("before", "after"))
    return Finetuned(Path(result["model"]), where, pd.DataFrame(result["log"]), before, after, device)


def _bars(progress: Any) -> tuple[Any, Any]:
    """(training progress, evaluation progress): bars on stderr, none, or the caller's pair."""
    if isinstance(progress, tuple):
        return progress
    if not progress:
        return None, None
    from protobench.api.evaluate import progress_display
    from protobench.api.progress import TrainProgress

    return TrainProgress(), progress_display(True)


def _checkpoint(model: Any, tmp: Path, adapter: str, options: dict[str, Any]) -> tuple[str | None, str, dict[str, Any]]:
    """(checkpoint path, adapter, options) of the model to fine-tune; a module in memory is saved first."""
    from protobench.api.model import as_model

    if model is None or isinstance(model, (str, Path)):
        return (None if model is None else str(model)), adapter, options
    handle = as_model(model)
    if handle.ckpt is not None:
        return handle.ckpt, handle.spec, handle.options
    path = tmp / f"{handle.name}.safetensors"
    handle.adapter.save(str(path))
    return str(path), "auto", {}
