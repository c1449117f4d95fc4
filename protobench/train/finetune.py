"""`protobench finetune` as a library call: the compensation method (docs/compensation.md) on a model of the
ProtoPNet family, with an evaluation before and after.

OUT holds:
    finetune.json      what the run is (--resume checks it), then how it went
    checkpoint.pt      model, optimizer, scheduler and log after the last finished epoch (removed at the end)
    train_log.csv      one row per epoch and phase: each loss term, training accuracy, seconds
    model.safetensors  the fine-tuned model (protobench format)
    before/, after/    `protobench evaluate` results (default protocol) on the evaluation data
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protobench import options
from protobench.data.imagelist import MAX_IMAGE_PIXELS, check_max_pixels
from protobench.demo import DEMO_TEST, DEMO_TRAIN
from protobench.errors import AdapterError, Interrupted, Notice, OptionError, ProtobenchError
from protobench.lock import holds_out
from protobench.train.settings import TUNABLE, TrainSettings
from protobench.train.state import LOG, STATE
from protobench.train.trainer import NoProgress, NonFinite, Progress

META, MODEL = "finetune.json", "model.safetensors"
OURS = (META, STATE, LOG, MODEL, "before", "after")


@dataclass
class FinetuneConfig:
    ckpt: str | None = None  # None: the built-in demo model
    data: str | None = None  # None: the demo train split
    out: str | None = None  # None: protobench-results/finetune-<checkpoint name>
    adapter: str = "auto"
    adapter_options: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None  # a layout name (protobench.data.layouts.LAYOUTS); None: detect
    split: str | None = None  # None: the layout's training split; an ImageFolder has none
    eval_data: str | None = None  # None: the demo test split after training on the demo, else no evaluation
    evaluate: bool = True  # evaluate before and after (default protocol) when there is evaluation data
    settings: TrainSettings = field(default_factory=TrainSettings)
    device: str = "auto"
    workers: int = 0  # image-decoding processes when the training set is too large to keep in memory
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are skipped unread (0: no limit)
    resume: bool = False
    overwrite: bool = False

    def check(self) -> None:
        """OptionError for any option out of its range, before anything is loaded or written."""
        from protobench.run.devices import check_device_name
        from protobench.run.evaluate import MAX_WORKERS

        self.settings.check()
        check_device_name(self.device)
        options.integer("workers", self.workers, 0, MAX_WORKERS)
        check_max_pixels(self.max_image_pixels)

    def resolved(self) -> FinetuneConfig:
        """Defaults filled in: the demo model and data, the output directory, the evaluation data."""
        from protobench.demo import DEMO_DATA, demo_checkpoint

        demo = self.ckpt is None
        if demo and self.data not in (None, DEMO_DATA, DEMO_TRAIN):
            raise ProtobenchError("give --ckpt with --data (without both, finetune runs the built-in demo)")
        if not demo and self.data is None:
            raise ProtobenchError("give --data, the dataset to fine-tune on (e.g. a CUB-200-2011 directory)")
        data = self.data or DEMO_TRAIN
        if data == DEMO_DATA:
            data = f"{DEMO_DATA}:{self.split or 'train'}"
        ckpt = self.ckpt or demo_checkpoint()
        out = self.out or str(Path("protobench-results") / f"finetune-{'demo' if demo else Path(ckpt).stem}")
        eval_data = self.eval_data or (DEMO_TEST if data == DEMO_TRAIN else None)
        return replace(self, ckpt=ckpt, data=data, out=out, eval_data=eval_data if self.evaluate else None)


def check_out(out: Path, overwrite: bool, resume: bool) -> bool:
    """Whether `out` holds a run to continue; refuses to mix runs (one-line errors)."""
    if overwrite and resume:
        raise ProtobenchError("--overwrite and --resume contradict each other: choose one")
    if out.exists() and not out.is_dir():
        raise ProtobenchError(f"--out {out} is a file, not a directory")
    if resume and (out / META).is_file():
        return True
    present = [name for name in OURS if (out / name).exists()]
    if present and resume and not overwrite:
        raise ProtobenchError(f"nothing to resume in {out} (no {META}, but {', '.join(present)}): "
                              "pass --overwrite to start again or choose another --out")
    if present and not overwrite:
        raise ProtobenchError(f"{out} already holds a fine-tuning run ({', '.join(present)}): add --resume to "
                              "continue it, --overwrite to start again, or choose another --out")
    if resume:  # e.g. a CI job that always passes --resume
        warnings.warn(f"nothing to resume in {out}: starting a fresh run", Notice, stacklevel=2)
    return False


def clear_previous(out: Path) -> None:
    """--overwrite: remove the earlier run, once the new one has passed every check."""
    from protobench.run import resume as runstate
    from protobench.files import writing

    with writing(out):
        for name in (META, STATE, LOG, MODEL):
            (out / name).unlink(missing_ok=True)
    for name in ("before", "after"):
        if (out / name).is_dir():
            runstate.clear(out / name)


def check_trainable(adapter, settings: TrainSettings) -> None:
    """A one-line error for families or models protobench cannot fine-tune (before any work is done)."""
    from protobench.models.adapter import PrototypeAdapter

    needed = ("training_loss", "parameter_groups") + (("push",) if settings.push else ())
    missing = [hook for hook in needed if getattr(type(adapter), hook) is getattr(PrototypeAdapter, hook)]
    if type(adapter).training_schedule is None:
        missing.append("training_schedule")
    if missing:
        raise AdapterError(f"adapter {adapter.name!r} cannot be fine-tuned: its family declares no "
                           f"{' / '.join(missing)} in its file; `protobench adapters` lists the families "
                           "protobench finetune trains")
    if settings.align_weight > 0 and bool((adapter.prototype_class_identity.sum(dim=0) <= 0).any()):
        raise OptionError("some of the model's classes have no prototypes, and the alignment loss needs one per "
                          "class: pass --lambda-align 0")


def run_identity(cfg: FinetuneConfig, adapter, dataset, device) -> dict[str, Any]:
    """What decides the fine-tuned weights: --resume continues only a run that matches it all."""
    from protobench.checkpoints.formats import sha256

    return {
        "adapter": adapter.name or cfg.adapter,
        "adapter_options": cfg.adapter_options,
        "checkpoint_sha256": sha256(cfg.ckpt),
        "data": cfg.data,
        "dataset_kind": getattr(dataset, "kind", None),
        "split": cfg.split,
        "train_images": len(dataset),
        "settings": cfg.settings.as_dict(),
        "device_type": device.type,
    }


def start_or_check(out: Path, identity: dict[str, Any], resuming: bool) -> None:
    """Record a new run, or check that --resume continues the same one. A run stopped by
    non-finite values may continue with other TUNABLE settings (lower learning rates)."""
    from protobench.run.resume import describe_differences, read_json_object
    from protobench.run.results import write_json

    if not resuming:
        write_json(out / META, {"identity": identity, "status": "running"})
        return
    meta = read_json_object(out / META)
    recorded, current = meta.get("identity"), json.loads(json.dumps(identity))
    settings = recorded.get("settings") if isinstance(recorded, dict) else None
    if not isinstance(settings, dict):
        raise ProtobenchError(f"{out / META} is damaged (no identity): use --overwrite to start again")
    tunable = [k for k in TUNABLE if k in settings] if meta.get("status") == "stopped" else []
    relaxed = {**recorded, "settings": {**settings, **{k: current["settings"][k] for k in tunable}}}
    differ = describe_differences(relaxed, current, list(current))
    if differ:
        raise ProtobenchError(f"--resume: {out} holds a different fine-tuning run ({differ}); "
                              "rerun with the original options or use --overwrite / another --out")
    changed = {k: current["settings"][k] for k in tunable if settings[k] != current["settings"][k]}
    if changed:  # the record says which settings the finished model was trained with, and from when
        retuned = [*meta.get("retuned", []), {"after_steps": len(read_log(out / LOG)), "settings": changed}]
        write_json(out / META, {**meta, "identity": current, "status": "running", "retuned": retuned})


@holds_out(lambda cfg, *_, **__: cfg.resolved().out)  # one run writing OUT at a time
def finetune(cfg: FinetuneConfig, progress: Progress | None = None, eval_progress=None) -> dict[str, Any]:
    """Fine-tune cfg.ckpt on cfg.data and write OUT (see the module docstring); evaluate before
    and after when there is evaluation data. Returns the paths, the log and both summaries."""
    from protobench.run.evaluate import resolve_device
    from protobench.files import check_writable_dir

    cfg.check()
    cfg = cfg.resolved()
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    resuming = check_out(out, cfg.overwrite, cfg.resume)
    check_writable_dir(out)
    adapter, dataset = load_for_training(cfg, device)
    if cfg.overwrite:
        clear_previous(out)
    start_or_check(out, run_identity(cfg, adapter, dataset, device), resuming)
    # before: the checkpoint as training loaded it (its adapter and options); after: the saved model,
    # whose metadata records the configuration those options gave
    before = evaluate_model(cfg, cfg.ckpt, cfg.adapter, cfg.adapter_options, out / "before", "before", eval_progress)
    if not (out / MODEL).is_file():
        train_and_save(cfg, adapter, dataset, out, progress or NoProgress())
    after = evaluate_model(cfg, str(out / MODEL), "auto", {}, out / "after", "after", eval_progress)
    log = read_log(out / LOG)
    return {"out": str(out), "model": str(out / MODEL), "log": log, "before": before, "after": after}


def load_for_training(cfg: FinetuneConfig, device):
    from protobench.run.evaluate import load_adapter, load_dataset
    from protobench.train.data import in_memory, train_split

    adapter = load_adapter(cfg.adapter, cfg.ckpt, cfg.adapter_options, device)
    check_trainable(adapter, cfg.settings)
    dataset, _ = load_dataset(cfg.data, adapter.info, cfg.dataset, train_split(cfg.data, cfg.dataset, cfg.split),
                              cfg.max_image_pixels)
    if getattr(dataset, "classes", None):  # the fine-tuned model records the names it was trained on
        adapter.info = replace(adapter.info, classes=tuple(map(str, dataset.classes)))
    return adapter, in_memory(dataset)


def train_and_save(cfg: FinetuneConfig, adapter, dataset, out: Path, progress: Progress) -> None:
    """The training plan from the last checkpoint (if any), then the model file and the record."""
    from protobench import __version__
    from protobench.run.resume import read_json_object
    from protobench.run.results import write_json
    from protobench.train.state import load_state
    from protobench.train.trainer import fit

    state = load_state(out / STATE, adapter.device) if (out / STATE).is_file() else None
    try:
        log = fit(adapter, dataset, cfg.settings.plan(adapter), objective=cfg.settings.objective(adapter), progress=progress,
                  out=out, state=state, workers=cfg.workers)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted {kept(out)}: rerun the same command with --resume to continue") from None
    except NonFinite as err:
        write_json(out / META, {**read_json_object(out / META), "status": "stopped", "stopped_because": str(err)})
        raise NonFinite(f"fine-tuning stopped {kept(out)}: {err}, and no model was written; lower the learning "
                        "rates (--lr-features, --lr-add-on, --lr-prototypes, --lr-last) or --lambda-align and "
                        "rerun with --resume to continue from there") from None
    finally:
        progress.stop()
    adapter.save(str(out / MODEL), extra={"finetuned_by": "protobench finetune",
                                          "finetune_settings": json.dumps(cfg.settings.as_dict(), sort_keys=True)})
    meta = read_json_object(out / META)
    write_json(out / META, {**meta, "status": "complete", "protobench_version": __version__,
                            "train_seconds": round(sum(row["seconds"] for row in log), 3),
                            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    (out / STATE).unlink(missing_ok=True)


def kept(out: Path) -> str:
    """Where the run stopped, for the message: what --resume continues from."""
    done = len(read_log(out / LOG))
    return f"after {done} finished epochs (saved in {out / STATE})" if done else "in the first epoch"


def read_log(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    if not path.is_file():
        return []
    frame = pd.read_csv(path)
    return [{k: v for k, v in row.items() if v == v} for row in frame.to_dict("records")]  # NaN: no such term


def evaluate_model(cfg: FinetuneConfig, ckpt: str, adapter: str, adapter_options: dict[str, Any], out: Path,
                   name: str, progress):
    """protobench evaluate (default protocol) on cfg.eval_data; None when there is none."""
    from protobench.run import resume as runstate
    from protobench.core.protocol import EvalProtocol
    from protobench.run.evaluate import EvaluateConfig, evaluate

    if cfg.eval_data is None:
        return None
    resume = out.is_dir() and runstate.state(out) != "empty"
    result = evaluate(EvaluateConfig(ckpt=ckpt, data=cfg.eval_data, out=str(out), adapter=adapter,
                                     adapter_options=adapter_options,
                                     protocol=EvalProtocol(), device=cfg.device, resume=resume, name=name,
                                     max_image_pixels=cfg.max_image_pixels), progress)
    return result["summary"]


def side_by_side(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(label, before, after, after - before) for each metric of protobench.core.metrics, in table order."""
    from protobench.core.metrics import measured

    rows = []
    for spec in measured([before, after]):
        old, new = float(before.get(spec.column, "nan")), float(after.get(spec.column, "nan"))
        rows.append((spec.label, old, new, new - old))
    return rows
