"""Training a ProtoPNet the way its paper does: its loss, its phases, and push.

Loss (Chen et al. 2019, reimplemented from the formulas):
    CE + 0.8 cluster - 0.08 separation + 1e-4 L1(last layer, off-class weights)
with min_d (B, P) the smallest distance of each prototype to any patch, max_dist = D k k,
own (B, P) = 1 where the prototype belongs to the image's class, and
    cluster    = mean_b(max_dist - max_p((max_dist - min_d) * own))       nearest own-class prototype
    separation = mean_b(max_dist - max_p((max_dist - min_d) * (1 - own)))  nearest other-class prototype
Phases (`schedule`, run by protobench.train.trainer): warm-up (backbone frozen), joint, push
(each prototype becomes its nearest training patch of its own class), last-layer-only epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from protobench.models.plan import Phase

if TYPE_CHECKING:  # the adapter imports this module
    from protobench.adapters.protopnet import ProtoPNet


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    cluster: float = 0.8
    separation: float = -0.08
    l1: float = 1e-4


def loss_terms(min_d: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, identity: torch.Tensor,
               last_weight: torch.Tensor, max_dist: float, weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """ProtoPNet's loss from its inputs: min distances (B, P), logits (B, C), labels (B,),
    prototype-class identity (P, C), last-layer weight (C, P). Returns each term and 'loss'."""
    own = identity[:, y].t()  # (B, P)
    closeness = max_dist - min_d
    cluster = (max_dist - (closeness * own).amax(dim=1)).mean()
    separation = (max_dist - (closeness * (1 - own)).amax(dim=1)).mean()
    l1 = (last_weight * (1 - identity.t())).abs().sum()
    ce = F.cross_entropy(logits, y)
    loss = weights.ce * ce + weights.cluster * cluster + weights.separation * separation + weights.l1 * l1
    return {"loss": loss, "ce": ce, "cluster": cluster, "separation": separation, "l1": l1}


def training_loss(model: ProtoPNet, x: torch.Tensor, y: torch.Tensor,
                  weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """One forward pass of `model` on normalized images x: ProtoPNet's loss terms, plus the
    pass's similarity 'maps' (B, P, h, w) and 'logits' (B, C) (finetune's alignment loss
    reuses the maps as its first pass)."""
    d = model.distances(model.conv_features(x))  # float64, as the forward's
    logits = model.last_layer(model.activations(d))
    p = model.prototype_vectors
    max_dist = float(p.shape[1] * p.shape[2] * p.shape[3])
    terms = loss_terms(d.amin(dim=(2, 3)).float(), logits, y, model.prototype_class_identity, model.last_layer.weight,
                       max_dist, weights)
    return {**terms, "maps": model.similarity(d).float(), "logits": logits}


def scalar_terms(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The loss terms of a training_loss result as floats (its 'maps' and 'logits' left out)."""
    return {name: float(value.detach()) for name, value in terms.items() if value.dim() == 0}


@torch.no_grad()
def push(model: ProtoPNet, loader) -> list[tuple[int, int, int] | None]:
    """Replace each prototype by its nearest latent patch among the loader's images of its class.

    The loader yields (x, y, index) batches. Returns, per prototype, the (dataset index,
    row, column) of its patch, or None when no image of its class was seen (left unchanged).
    """
    was_training = model.training
    model.eval()
    p = model.prototype_vectors
    num, k = p.shape[0], p.shape[-1]
    proto_class = model.prototype_class_identity.argmax(dim=1)  # (P,)
    best = torch.full((num,), torch.inf, dtype=torch.float64, device=p.device)  # distances are float64
    patches = p.detach().clone()
    where: list[tuple[int, int, int] | None] = [None] * num
    for x, y, ids in loader:
        x, y = x.to(p.device), y.to(p.device)
        z = model.conv_features(x)
        d = model.distances(z)  # (B, P, h', w')
        w_out = d.shape[3]
        mine = y[:, None] == proto_class[None, :]  # (B, P): images of the prototype's class
        flat = d.masked_fill(~mine[..., None, None], torch.inf).transpose(0, 1).flatten(1)  # (P, B h' w')
        values, pos = flat.min(dim=1)
        unfolded = F.unfold(z, k)  # (B, D k k, h' w')
        for j in torch.nonzero(values < best).flatten().tolist():
            b, cell = divmod(int(pos[j]), d.shape[2] * w_out)
            best[j] = values[j]
            patches[j] = unfolded[b, :, cell].view_as(patches[j])
            where[j] = (int(ids[b]), cell // w_out, cell % w_out)
    p.data.copy_(patches)
    model.train(was_training)
    return where


def schedule(*, warm: int = 0, joint: int = 0, push: bool = True, last: int = 0, lr_features: float,
             lr_add_on: float, lr_prototypes: float, lr_last: float, weight_decay: float, step_size: int,
             gamma: float = 0.1, joint_extras: tuple[str, ...] = ()) -> tuple[Phase, ...]:
    """ProtoPNet's phases as data (Adam throughout, as the original): warm-up (backbone frozen and in
    eval mode: add-on and prototypes only), joint (all but the last layer; StepLR), push, last
    layer only. Weight decay on the backbone and the add-on, as the original."""
    decay = {"features": weight_decay, "add_on": weight_decay}
    return (Phase("warm", warm, {"add_on": lr_add_on, "prototypes": lr_prototypes}, {"add_on": weight_decay}),
            Phase("joint", joint, {"features": lr_features, "add_on": lr_add_on, "prototypes": lr_prototypes}, decay,
                  step_size=step_size, gamma=gamma, extras=joint_extras),
            Phase("push", 1 if push else 0, push=True),
            Phase("last", last, {"last_layer": lr_last}))
