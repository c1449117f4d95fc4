"""Each phase's optimizer, the checkpoint after every plan step, and continuing from one.

checkpoint.pt holds the model's state dict, the optimizer's and the scheduler's, the phase
the optimizer belongs to, how many plan steps are done and the log so far. It is replaced
atomically after each step, so a kill at any moment leaves the last finished epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from protobench.files import atomic_path
from protobench.models.adapter import PrototypeAdapter
from protobench.models.plan import Phase

STATE, LOG = "checkpoint.pt", "train_log.csv"


def make_optimizer(adapter: PrototypeAdapter, phase: Phase) -> torch.optim.Optimizer:
    """Adam over the phase's groups only (the rest frozen), the model in the phase's mode."""
    groups = adapter.parameter_groups()
    for param in adapter.model.parameters():
        param.requires_grad_(False)
    for part in phase.lr:
        for param in groups[part]:
            param.requires_grad_(True)
    adapter.model.train(phase.batch_statistics)
    return torch.optim.Adam([{"params": groups[part], "lr": lr, "weight_decay": phase.weight_decay.get(part, 0.0)}
                             for part, lr in phase.lr.items()])


def phase_optimizer(adapter: PrototypeAdapter, phase: Phase, state: dict[str, Any] | None):
    """The phase's optimizer (and its StepLR), continued from `state` when the checkpoint was
    taken in the middle of this phase."""
    optimizer = make_optimizer(adapter, phase)
    scheduler = None
    if phase.step_size is not None:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, phase.step_size, phase.gamma)
    if state is not None and state["phase"] == phase.name:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        apply_changed_rates(optimizer, scheduler, phase)
    return optimizer, scheduler


def apply_changed_rates(optimizer, scheduler, phase: Phase) -> None:
    """After a stop on non-finite values, --resume may lower the learning rates: the saved
    optimizer state holds the old ones. Groups whose rate did not change are left exactly as
    saved (a plain resume stays bit-identical)."""
    for i, (part, group) in enumerate(zip(phase.lr, optimizer.param_groups)):
        group["weight_decay"] = phase.weight_decay.get(part, 0.0)
        base = group.get("initial_lr", group["lr"])  # StepLR keeps the base rate in initial_lr
        if base == phase.lr[part]:
            continue
        group["lr"] = phase.lr[part] * (phase.gamma ** (scheduler.last_epoch // phase.step_size) if scheduler else 1.0)
        if scheduler is not None:
            group["initial_lr"] = scheduler.base_lrs[i] = phase.lr[part]


def save(out: Path, adapter, optimizer, scheduler, phase: str | None, done: int, log: list[dict]) -> None:
    """out/checkpoint.pt (atomically) and out/train_log.csv after plan step `done`."""
    state = {"model": adapter.model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
             "scheduler": scheduler.state_dict() if scheduler else None, "phase": phase, "done": done,
             "log": json.dumps(log)}
    with atomic_path(out / STATE) as tmp:
        torch.save(state, tmp)
    write_log(out / LOG, log)


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
