"""The one training loop: a plan of phases, run epoch by epoch, with a checkpoint after each.

A plan is data: a list of `Phase`s (which parameter groups train, at which learning rates and
weight decay, for how many epochs, under which StepLR schedule; or push), the batch size and
the seed. The model brings its family's loss, parameter groups and push through the adapter
hooks (`training_loss`, `parameter_groups`, `push`); an `Objective` may add terms per batch
(finetune's masking augmentation and alignment loss, protobench.train.objective). The demo's
training (scripts/train_demo.py) and `protobench finetune` both run here.

Every random draw depends only on (seed, plan step, batch index): each epoch shuffles with its
own generator and each batch draws its randomness from its own, so a run resumed from an epoch
checkpoint (protobench.train.state) ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from protobench.errors import ProtobenchError
from protobench.models.adapter import PrototypeAdapter
from protobench.train import state as saved
from protobench.train.data import batches, epoch_order, generator
from protobench.models.plan import Phase, Plan


class NonFinite(ProtobenchError):
    """The loss or a weight became inf or NaN: training stops before the damage is saved."""


Row = dict[str, float]


class Objective(Protocol):
    def __call__(self, adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, phase: Phase,
                 gen: torch.Generator) -> tuple[torch.Tensor, Row]: ...


def family_row(terms: dict[str, torch.Tensor], y: torch.Tensor) -> Row:
    """The family loss's scalar terms as floats, its total as 'family', the batch's training
    accuracy as 'acc' when the loss returned logits (train_step adds the objective's 'loss')."""
    row = {name: float(v.detach()) for name, v in terms.items() if v.dim() == 0 and name != "loss"}
    row["family"] = float(terms["loss"].detach())
    if "logits" in terms:
        row["acc"] = 100.0 * float((terms["logits"].argmax(dim=1) == y).float().mean())
    return row


def family_objective(adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, phase: Phase,
                     gen: torch.Generator) -> tuple[torch.Tensor, Row]:
    """The family's own loss (adapter.training_loss), nothing added."""
    terms = adapter.training_loss(x, y)
    return terms["loss"], family_row(terms, y)


class Progress(Protocol):
    def start(self, total: int, description: str) -> None: ...
    def update(self, done: int, terms: dict[str, float]) -> None: ...
    def end(self, row: dict) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def start(self, total: int, description: str) -> None: ...
    def update(self, done: int, terms: dict[str, float]) -> None: ...
    def end(self, row: dict) -> None: ...
    def stop(self) -> None: ...


def train_step(adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, phase: Phase, gen: torch.Generator,
               optimizer: torch.optim.Optimizer, objective: Objective) -> Row:
    """The objective on one batch, then one optimizer step (refused when the loss is not finite)."""
    total, row = objective(adapter, x, y, phase, gen)
    row["loss"] = float(total.detach())
    if not math.isfinite(row["loss"]):  # before the step: an inf / NaN gradient would spoil every weight
        raise NonFinite(f"the loss became {row['loss']}")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return row


def run_epoch(adapter: PrototypeAdapter, data, plan: Plan, step: int, phase: Phase, optimizer: torch.optim.Optimizer,
              objective: Objective = family_objective, progress: Progress | None = None, description: str = "",
              workers: int = 0) -> Row:
    """Plan step `step`, an epoch of `phase`; returns the per-image mean of each term."""
    positions = epoch_order(plan.seed, step, len(data), plan.batch_size)
    sums: dict[str, float] = {}
    seen = 0
    progress = progress or NoProgress()
    progress.start(len(positions), description or f"{phase.name} (step {step})")
    for b, (x, y, _) in enumerate(batches(data, positions, adapter.device, workers)):
        gen = generator(plan.seed, "batch", step, b, device=adapter.device)
        try:
            row = train_step(adapter, x, y, phase, gen, optimizer, objective)
        except NonFinite as err:
            raise NonFinite(f"{err} at batch {b + 1} of {description or phase.name}") from None
        for name, value in row.items():
            sums[name] = sums.get(name, 0.0) + value * len(y)
        seen += len(y)
        progress.update(b + 1, {name: total / seen for name, total in sums.items()})
    return {name: total / max(seen, 1) for name, total in sums.items()}


def check_finite(adapter: PrototypeAdapter, where: str) -> None:
    """NonFinite if a weight or buffer is inf / NaN (checked before each epoch checkpoint is saved)."""
    for name, tensor in adapter.model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFinite(f"{name} became non-finite in {where}")


def fit(adapter: PrototypeAdapter, data, plan: Plan, *, objective: Objective = family_objective,
        progress: Progress | None = None, out: Path | None = None, state: dict[str, Any] | None = None,
        workers: int = 0, on_push: Callable[[list], None] | None = None) -> list[dict]:
    """Run the plan's remaining steps (all of them without `state`); returns the log, one row per
    step. With `out`, the state after each step goes to out/checkpoint.pt and the log to
    out/train_log.csv (protobench.train.state). The model ends in eval mode, every parameter trainable."""
    plan.check(adapter.parameter_groups())
    steps, progress = plan.steps(), progress or NoProgress()
    done, log, optimizer, scheduler, current = 0, [], None, None, None
    if state is not None:
        adapter.model.load_state_dict(state["model"])
        done, log = state["done"], state["log"]
    for k in range(done, len(steps)):
        phase, epoch = steps[k]
        started = time.perf_counter()
        if phase.push:
            where = adapter.push(batches(data, list(torch.arange(len(data)).split(plan.batch_size)), adapter.device,
                                         workers))
            row: dict[str, Any] = {"pushed": sum(w is not None for w in where)}
            if on_push is not None:
                on_push(where)
        else:
            if phase.name != current:
                optimizer, scheduler = saved.phase_optimizer(adapter, phase, state if k == done else None)
                current = phase.name
            row = run_epoch(adapter, data, plan, k, phase, optimizer, objective, progress,
                            f"{phase.name} epoch {epoch + 1}/{phase.epochs}", workers)
            if scheduler is not None:
                scheduler.step()
        check_finite(adapter, f"{phase.name} epoch {epoch + 1}" if not phase.push else phase.name)
        log.append({"phase": phase.name, "epoch": epoch, **row, "seconds": round(time.perf_counter() - started, 3)})
        if out is not None:
            saved.save(out, adapter, optimizer, scheduler, current, k + 1, log)
        progress.end(log[-1])
    for param in adapter.model.parameters():
        param.requires_grad_(True)
    adapter.model.eval()
    return log
