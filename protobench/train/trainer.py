"""The loop of `protobench finetune` (SPEC 4): the phases, one training step, epoch checkpoints.

Plan: joint epochs (everything but the last layer; the family's loss + lambda * alignment
loss; Adam, StepLR), push, last-layer epochs (the family's loss; the rest frozen, in eval
mode). Every random draw depends only on (seed, plan step, batch index): each epoch
shuffles with its own generator and each batch draws its augmentation and alignment
randomness from its own, so a run resumed from an epoch checkpoint ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Protocol

import torch

from protobench import options
from protobench.models.adapter import PrototypeAdapter
from protobench.core.protocol import MAX_RADIUS
from protobench.run.forward import frozen_eval
from protobench.train.compensation import alignment_loss, masking_augmentation
from protobench.errors import ProtobenchError

PHASE_PARTS = {"joint": ("features", "add_on", "prototypes"), "last": ("last_layer",)}


DEFAULT_LAMBDA = {False: 10.0, True: 3.0}  # the paper's 10; 3 for the adversarial variant (docs/compensation.md)
MAX_EPOCHS, MAX_BATCH = 100_000, 65536
# what a run stopped by non-finite values may change on --resume: the step sizes that made it diverge
TUNABLE = ("lr_features", "lr_add_on", "lr_prototypes", "lr_last", "weight_decay", "lambda_align")


class NonFinite(ProtobenchError):
    """The loss or a weight became inf or NaN: training stops before the damage is saved."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the fine-tuned weights (with the checkpoint, data and device type)."""

    lambda_align: float | None = None  # weight of the alignment loss (0: the family's loss alone); None: DEFAULT_LAMBDA
    align_loss: str = "l1"  # 'l1' or 'l2'
    adversarial: bool = False  # outside of the mask: sign-gradient perturbation instead of the mean colour
    adv_steps: int = 3  # crafting steps of eps / 2 after a random start
    adv_eps: float = 0.4  # L-inf radius, normalized units (the benchmark's)
    mask_aug: bool = True  # SPEC 4.2 masking augmentation
    aug_prob: float = 0.5  # probability per image
    epochs: int = 3  # joint epochs
    last_epochs: int = 5  # last-layer epochs (after push)
    push: bool = True
    lr_features: float = 1e-4
    lr_add_on: float = 3e-3
    lr_prototypes: float = 3e-3
    lr_last: float = 1e-3  # ProtoPNet's CUB recipe: 1e-4, with 4x more steps (docs/compensation.md)
    weight_decay: float = 1e-3  # backbone and add-on, as ProtoPNet
    step_size: int = 5  # StepLR over the joint epochs
    gamma: float = 0.1
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lambda_align is None:
            object.__setattr__(self, "lambda_align", DEFAULT_LAMBDA[self.adversarial])

    def check(self) -> None:
        """OptionError for any setting out of its range, before anything is loaded or written."""
        options.choice("--align-loss", self.align_loss, ("l1", "l2"))
        options.number("--lambda-align", self.lambda_align, 0)
        options.integer("--adv-steps", self.adv_steps, 0, 1000)
        options.number("--adv-eps", self.adv_eps, 0, MAX_RADIUS)
        options.number("--aug-prob", self.aug_prob, 0, 1)
        options.integer("--epochs", self.epochs, 0, MAX_EPOCHS)
        options.integer("--last-epochs", self.last_epochs, 0, MAX_EPOCHS)
        for name in ("lr_features", "lr_add_on", "lr_prototypes", "lr_last", "weight_decay"):
            options.number(f"--{name.replace('_', '-')}", getattr(self, name), 0)
        options.integer("step_size", self.step_size, 1)
        options.number("gamma", self.gamma, 0)
        options.integer("--batch-size", self.batch_size, 2, MAX_BATCH)  # batch norm cannot train on 1 image
        options.integer("--seed", self.seed, 0, options.SEED_MAX)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def plan(s: TrainSettings) -> list[tuple[str, int]]:
    """The run as a list of (phase, epoch) steps; checkpoints fall between steps."""
    return ([("joint", e) for e in range(s.epochs)] + ([("push", 0)] if s.push else [])
            + [("last", e) for e in range(s.last_epochs)])


def generator(seed: int, *keys: Any, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded by a hash of (seed, *keys): independent streams, no shared state."""
    digest = hashlib.sha256(json.dumps([seed, *keys]).encode()).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def epoch_order(seed: int, step: int, n: int, batch_size: int) -> list[torch.Tensor]:
    """Step `step`'s shuffled batches of positions 0..n-1; a last batch of one image is dropped
    (batch norm cannot train on it)."""
    order = torch.randperm(n, generator=generator(seed, "shuffle", step))
    parts = list(order.split(batch_size))
    return parts[:-1] if len(parts) > 1 and len(parts[-1]) == 1 else parts


def batches(data: torch.utils.data.Dataset, positions: list[torch.Tensor], device: torch.device,
            workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, dataset index) per batch of positions, on `device`: sliced from an in-memory
    TensorDataset, or decoded by a DataLoader (undecodable images dropped)."""
    if isinstance(data, torch.utils.data.TensorDataset):
        x, y, ids = data.tensors
        for idx in positions:
            yield x[idx].to(device), y[idx].to(device), ids[idx]
        return
    from protobench.data.imagelist import collate

    loader = torch.utils.data.DataLoader(data, batch_sampler=[p.tolist() for p in positions], collate_fn=collate,
                                         num_workers=workers)
    for x, y, ids, _ in loader:
        if x is not None:
            yield x.to(device), y.to(device), ids


def make_optimizer(adapter: PrototypeAdapter, s: TrainSettings, phase: str) -> torch.optim.Optimizer:
    """Adam over the phase's parts only (the rest frozen); the last-layer phase keeps the whole
    network in eval mode, so batch-norm statistics stay fixed and pushed prototypes stay patches."""
    groups = adapter.parameter_groups()
    lr = {"features": s.lr_features, "add_on": s.lr_add_on, "prototypes": s.lr_prototypes, "last_layer": s.lr_last}
    decay = {"features": s.weight_decay, "add_on": s.weight_decay}
    for param in adapter.model.parameters():
        param.requires_grad_(False)
    parts = PHASE_PARTS[phase]
    for part in parts:
        for param in groups[part]:
            param.requires_grad_(True)
    adapter.model.train(phase == "joint")
    return torch.optim.Adam([{"params": groups[part], "lr": lr[part], "weight_decay": decay.get(part, 0.0)}
                             for part in parts])


@contextmanager
def running_stats_kept(model: torch.nn.Module) -> Iterator[None]:
    """Batch norm in training mode normalizes with batch statistics, and here leaves its running
    statistics alone: passes on blanked or perturbed images do not move the statistics that test
    images are normalized with. (Eval mode still uses the running statistics.)"""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False  # in training mode: batch statistics, no update
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def eval_maps(adapter: PrototypeAdapter):
    """The adapter's maps in eval mode with frozen parameters: crafting the adversarial outside
    neither moves batch-norm statistics nor builds a graph through the weights."""

    def maps(images: torch.Tensor) -> torch.Tensor:
        with frozen_eval(adapter.model):
            return adapter(images)[0]

    return maps


def alignment_term(adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, s: TrainSettings,
                   gen: torch.Generator, maps: torch.Tensor | None,
                   bounds: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """SPEC 4.1's alignment loss (or its adversarial variant) for one batch, with gradient."""
    adversarial = None
    if s.adversarial:
        adversarial = {"eps": s.adv_eps, "steps": s.adv_steps, "bounds": bounds, "crafter": eval_maps(adapter)}
    with running_stats_kept(adapter.model):
        return alignment_loss(lambda images: adapter(images)[0], x, y, adapter.prototype_class_identity, gen,
                              kind=s.align_loss, adversarial=adversarial,
                              maps=None if maps is None else maps.detach())


def train_step(adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, s: TrainSettings, phase: str,
               gen: torch.Generator, optimizer: torch.optim.Optimizer,
               bounds: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, float]:
    """Augment, the family's loss (+ lambda * alignment in the joint phase), one optimizer step."""
    if s.mask_aug:
        x, _ = masking_augmentation(x, gen, s.aug_prob)
    terms = adapter.training_loss(x, y)
    total = terms["loss"]
    row = {name: float(v.detach()) for name, v in terms.items() if v.dim() == 0 and name != "loss"}
    row["family"] = float(terms["loss"].detach())
    if phase == "joint" and s.lambda_align > 0:
        align = alignment_term(adapter, x, y, s, gen, terms.get("maps"), bounds)
        total = total + s.lambda_align * align
        row["align"] = float(align.detach())
    row["loss"] = float(total.detach())
    if not math.isfinite(row["loss"]):  # before the step: an inf / NaN gradient would spoil every weight
        raise NonFinite(f"the loss became {row['loss']}")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    if "logits" in terms:
        row["acc"] = 100.0 * float((terms["logits"].argmax(dim=1) == y).float().mean())
    return row


def run_epoch(adapter: PrototypeAdapter, data, s: TrainSettings, step: int, phase: str,
              optimizer: torch.optim.Optimizer, bounds, progress: Progress | None = None,
              description: str = "", workers: int = 0) -> dict[str, float]:
    """Plan step `step`, an epoch of `phase`; returns the per-image mean of each term."""
    positions = epoch_order(s.seed, step, len(data), s.batch_size)
    sums: dict[str, float] = {}
    seen = 0
    progress = progress or NoProgress()
    progress.start(len(positions), description or f"{phase} (step {step})")
    for b, (x, y, _) in enumerate(batches(data, positions, adapter.device, workers)):
        gen = generator(s.seed, "batch", step, b, device=adapter.device)
        try:
            row = train_step(adapter, x, y, s, phase, gen, optimizer, bounds)
        except NonFinite as err:
            raise NonFinite(f"{err} at batch {b + 1} of {description or phase}") from None
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
