"""The fine-tuning plan with a checkpoint after every epoch, and continuing from one.

checkpoint.pt holds the model's state dict, the optimizer's and the scheduler's, the phase
the optimizer belongs to, how many plan steps are done and the log so far. It is replaced
atomically after each step, so a kill at any moment leaves the last finished epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from protobench.files import atomic_path
from protobench.train.trainer import (PHASE_PARTS, Progress, TrainSettings, batches, check_finite, make_optimizer, plan,
                                run_epoch)

STATE, LOG = "checkpoint.pt", "train_log.csv"


def save_state(path: Path, adapter, optimizer, scheduler, phase: str | None, done: int, log: list[dict]) -> None:
    state = {"model": adapter.model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
             "scheduler": scheduler.state_dict() if scheduler else None, "phase": phase, "done": done,
             "log": json.dumps(log)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, device) -> dict[str, Any]:
    """The epoch checkpoint, read by the same guarded reader as any checkpoint (it is a file on
    disk like any other: nothing in it is run, no size it declares is trusted)."""
    from protobench.checkpoints.formats import open_checkpoint, sniff_bytes
    from protobench.errors import ProtobenchError
    from protobench.checkpoints.pickles import load_pickle

    try:
        with open_checkpoint(path) as f:
            state = load_pickle(str(path), sniff_bytes(f.read(64)), f)
        state["log"] = json.loads(state["log"])
    except (ProtobenchError, KeyError, TypeError, ValueError) as err:
        raise ProtobenchError(f"cannot read {path} ({err}): use --overwrite to start again") from None
    return {k: _to(v, device) for k, v in state.items()}


def _to(value: Any, device) -> Any:
    """Tensors (in nested dicts, lists and tuples) moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value


def write_log(path: Path, log: list[dict]) -> None:
    import pandas as pd

    from protobench.run.results import write_csv

    write_csv(path, pd.DataFrame(log))


def fit(adapter, data, s: TrainSettings, out: Path, progress: Progress, state: dict[str, Any] | None = None,
        workers: int = 0) -> list[dict]:
    """Run the plan's remaining steps (all of them without `state`), checkpointing after each;
    returns the log, one row per step. The model ends in eval mode with every parameter trainable."""
    from protobench.core.attack import image_bounds

    steps = plan(s)
    done, log, optimizer, scheduler, current = 0, [], None, None, None
    if state is not None:
        adapter.model.load_state_dict(state["model"])
        done, log = state["done"], state["log"]
    bounds = image_bounds(adapter.info.mean, adapter.info.std, adapter.device)
    counts = {phase: sum(p == phase for p, _ in steps) for phase, _ in steps}
    for k in range(done, len(steps)):
        phase, epoch = steps[k]
        started = time.perf_counter()
        if phase == "push":
            where = adapter.push(batches(data, list(torch.arange(len(data)).split(s.batch_size)), adapter.device,
                                         workers))
            row = {"pushed": sum(w is not None for w in where)}
        else:
            if phase != current:
                optimizer, scheduler = phase_optimizer(adapter, s, phase, state if k == done else None)
                current = phase
            row = run_epoch(adapter, data, s, k, phase, optimizer, bounds, progress,
                            f"{phase} epoch {epoch + 1}/{counts[phase]}", workers)
            if scheduler is not None:
                scheduler.step()
        check_finite(adapter, f"{phase} epoch {epoch + 1}" if phase != "push" else "push")
        log.append({"phase": phase, "epoch": epoch, **row, "seconds": round(time.perf_counter() - started, 3)})
        save_state(out / STATE, adapter, optimizer, scheduler, current, k + 1, log)
        write_log(out / LOG, log)
        progress.end(log[-1])
    for param in adapter.model.parameters():
        param.requires_grad_(True)
    adapter.model.eval()
    return log


def phase_optimizer(adapter, s: TrainSettings, phase: str, state: dict[str, Any] | None):
    """The phase's optimizer (and StepLR for the joint phase), continued from `state` when the
    checkpoint was taken in the middle of this phase."""
    optimizer = make_optimizer(adapter, s, phase)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, s.step_size, s.gamma) if phase == "joint" else None
    if state is not None and state["phase"] == phase:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        apply_changed_rates(optimizer, scheduler, s, phase)
    return optimizer, scheduler


def apply_changed_rates(optimizer, scheduler, s: TrainSettings, phase: str) -> None:
    """After a stop on non-finite values, --resume may lower the learning rates: the saved
    optimizer state holds the old ones. Groups whose rate did not change are left exactly as
    saved (a plain resume stays bit-identical)."""
    lr = {"features": s.lr_features, "add_on": s.lr_add_on, "prototypes": s.lr_prototypes, "last_layer": s.lr_last}
    decay = {"features": s.weight_decay, "add_on": s.weight_decay}
    for i, (part, group) in enumerate(zip(PHASE_PARTS[phase], optimizer.param_groups)):
        group["weight_decay"] = decay.get(part, 0.0)
        base = group.get("initial_lr", group["lr"])  # StepLR keeps the base rate in initial_lr
        if base == lr[part]:
            continue
        group["lr"] = lr[part] * (s.gamma ** (scheduler.last_epoch // s.step_size) if scheduler else 1.0)
        if scheduler is not None:
            group["initial_lr"] = scheduler.base_lrs[i] = lr[part]
