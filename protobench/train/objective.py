"""finetune's objective per batch (docs/compensation.md): masking augmentation, the family's
loss, and in the phases that ask for it ("align" in Phase.extras) lambda times the alignment
loss or its adversarial variant (protobench.train.compensation)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from protobench.core.attack import image_bounds
from protobench.models.adapter import PrototypeAdapter
from protobench.run.forward import frozen_eval
from protobench.train.compensation import alignment_loss, masking_augmentation
from protobench.models.plan import Phase
from protobench.train.trainer import Row, family_row


class Compensation:
    """The objective: called per batch by protobench.train.trainer with the batch's generator."""

    def __init__(self, adapter: PrototypeAdapter, *, weight: float, kind: str = "l1", mask_aug: bool = True,
                 aug_prob: float = 0.5, adversarial: dict | None = None):
        """weight: lambda; kind: 'l1' or 'l2'; adversarial: None (blank the outside) or
        {"eps", "steps"} for the adversarial variant (the image's valid range is added here)."""
        self.weight, self.kind, self.mask_aug, self.aug_prob = weight, kind, mask_aug, aug_prob
        self.adversarial = None
        if adversarial is not None:
            bounds = image_bounds(adapter.info.mean, adapter.info.std, adapter.device)
            self.adversarial = {**adversarial, "bounds": bounds, "crafter": eval_maps(adapter)}

    def __call__(self, adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, phase: Phase,
                 gen: torch.Generator) -> tuple[torch.Tensor, Row]:
        if self.mask_aug:
            x, _ = masking_augmentation(x, gen, self.aug_prob)
        terms = adapter.training_loss(x, y)
        total, row = terms["loss"], family_row(terms, y)
        if "align" in phase.extras and self.weight > 0:
            align = self.alignment(adapter, x, y, gen, terms.get("maps"))
            total = total + self.weight * align
            row["align"] = float(align.detach())
        return total, row

    def alignment(self, adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                  maps: torch.Tensor | None) -> torch.Tensor:
        """docs/compensation.md's alignment loss (or its adversarial variant) for one batch, with gradient."""
        with running_stats_kept(adapter.model):
            return alignment_loss(lambda images: adapter(images)[0], x, y, adapter.prototype_class_identity, gen,
                                  kind=self.kind, adversarial=self.adversarial,
                                  maps=None if maps is None else maps.detach())


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
