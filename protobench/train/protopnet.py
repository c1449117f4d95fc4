"""Training a ProtoPNet the way its paper does: its loss, its phases, and push.

Loss (Chen et al. 2019, reimplemented from the formulas):
    CE + 0.8 cluster - 0.08 separation + 1e-4 L1(last layer, off-class weights)
with min_d (B, P) the smallest distance of each prototype to any patch, max_dist = D k k,
own (B, P) = 1 where the prototype belongs to the image's class, and
    cluster    = mean_b(max_dist - max_p((max_dist - min_d) * own))       nearest own-class prototype
    separation = mean_b(max_dist - max_p((max_dist - min_d) * (1 - own)))  nearest other-class prototype
Phases: warm-up (backbone frozen), joint, push (each prototype becomes its nearest
training patch of its own class), last-layer-only epochs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

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


@dataclass(frozen=True)
class Recipe:
    """A ProtoPNet training schedule (Adam throughout, as the original)."""

    warm_epochs: int = 1  # backbone frozen: add-on and prototypes only
    joint_epochs: int = 6  # everything but the last layer
    last_epochs: int = 3  # after push: the last layer only
    batch_size: int = 32
    lr_features: float = 1e-3  # the original uses 1e-4 for ImageNet-pretrained backbones
    lr_add_on: float = 3e-3
    lr_prototypes: float = 3e-3
    lr_last: float = 1e-3
    weight_decay: float = 1e-3  # on backbone and add-on, as the original
    step_size: int = 5  # StepLR over joint epochs
    gamma: float = 0.1
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


Log = Callable[[dict], None]


def _epoch(model: ProtoPNet, loader, optimizer, phase: str, epoch: int, log: Log | None) -> None:
    sums: dict[str, float] = {}
    seen = 0
    for x, y, _ in loader:
        terms = training_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        for name, value in scalar_terms(terms).items():
            sums[name] = sums.get(name, 0.0) + value * len(y)
        seen += len(y)
    if log is not None:
        log({"phase": phase, "epoch": epoch, **{name: total / seen for name, total in sums.items()}})


def _optimizer(model: ProtoPNet, recipe: Recipe, *parts: str) -> torch.optim.Optimizer:
    """Adam over the named parts only; the rest is frozen, a frozen backbone in eval mode
    (its batch-norm statistics stay fixed, so pushed prototypes remain exact patches)."""
    settings = {"features": (recipe.lr_features, recipe.weight_decay), "add_on_layers": (recipe.lr_add_on, recipe.weight_decay),
                "prototype_vectors": (recipe.lr_prototypes, 0.0), "last_layer": (recipe.lr_last, 0.0)}
    for name, param in model.named_parameters():
        param.requires_grad_(name.split(".")[0] in parts)
    model.train()
    if "features" not in parts:
        model.features.eval()
    groups = [{"params": [p for n, p in model.named_parameters() if n.split(".")[0] == part],
               "lr": settings[part][0], "weight_decay": settings[part][1]} for part in parts]
    return torch.optim.Adam(groups)


def train(model: ProtoPNet, dataset, recipe: Recipe = Recipe(), log: Log | None = None) -> list:
    """Warm-up, joint, push, last layer; returns push's patch locations. Seeded by recipe.seed."""
    generator = torch.Generator().manual_seed(recipe.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, generator=generator)
    warm = _optimizer(model, recipe, "add_on_layers", "prototype_vectors")
    for epoch in range(recipe.warm_epochs):
        _epoch(model, loader, warm, "warm", epoch, log)
    joint = _optimizer(model, recipe, "features", "add_on_layers", "prototype_vectors")
    schedule = torch.optim.lr_scheduler.StepLR(joint, recipe.step_size, recipe.gamma)
    for epoch in range(recipe.joint_epochs):
        _epoch(model, loader, joint, "joint", epoch, log)
        schedule.step()
    where = push(model, torch.utils.data.DataLoader(dataset, batch_size=recipe.batch_size))
    last = _optimizer(model, recipe, "last_layer")
    for epoch in range(recipe.last_epochs):
        _epoch(model, loader, last, "last", epoch, log)
    for param in model.parameters():
        param.requires_grad_(True)
    model.eval()
    return where
