"""CaBRNet's four decision heads, reimplemented from its formulas, each on the extractor's output z.

    d = |z|^2 - 2 z.p + |p|^2                       (B, P, h, w) squared L2, float64 (core.precision)
    sim_log(d) = log((relu(d) + 1) / (relu(d) + eps))          ProtoPNet's similarity
    sim_exp(d) = exp(-sqrt(|d| + eps))                          ProtoTree's (its log with log_probabilities)

- ProtoPNet: logits = last_layer(sim(min_hw d)); with compatibility_mode, log((m + 1) / (m + 1e-4)) of the
  unclamped minimum m, as CaBRNet reproduces the original code. A ProtoTree similarity layer whose own params set
  log_probabilities gives -sqrt(|d| + eps) there (ProtoPool's x too); the maps still show exp of it.
- ProtoTree: s_k = max_hw sim_exp of node k's prototype; logits = log sum over leaves of the product of s_k
  or 1 - s_k along the path times softmax(leaf), in log space. With log_probabilities CaBRNet 1.2 takes the
  similarity layer's output v as log s and log(1 - exp(-(|v| + 1e-7))) as log(1 - s); its similarity layer
  gives exp(-sqrt(...)) there unless the similarity's own params set log_probabilities (CaBRNet passes
  the classifier's flag beside the params, where the layer does not read it). protobench does the same.
- ProtoPool: M = proto_slot_map (softmax over prototypes with compatibility_mode); x[b, c, n] =
  sim(min_hw d @ M) - sim(mean_hw d @ M); logits = last_layer(x).
- PIP-Net: maps = softmax over channels of z; logits = max_hw maps @ relu(W)^T + b (no 0.1 threshold).

Maps are CaBRNet's `similarities` (sim of d per location; PIP-Net's softmax). With log_probabilities a
ProtoTree's similarities are log-probabilities; protobench shows their exp, the probability, so maps stay
non-negative. ProtoTree prototypes no decision node uses (pruned) are left out of the maps.

`distance = "float32"` (`--distance float32`, PrototypeAdapter.set_distance) runs CaBRNet's own operations in
float32, in its order, instead: its similarity layer's squared distance (`distances32`), then its pooling
(`-max_pool2d(-d)` and `avg_pool2d` with compatibility_mode, `min` and `mean` over the flattened map without),
the similarity of the pooled distance (ProtoTree: the maximum over the map of the similarity), and ProtoTree's
tree node by node (adapters/_tree.tree_output). PIP-Net has no distance: it computes the same in both modes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protobench.adapters._tree import leaf_paths, tree_output  # (NL, NB) masks: each leaf path's turns to child 0 / 1
from protobench.core.precision import full_precision, original_squared_distances, squared_distances

TREE = ("branch_prototype", "branch_children")  # (NB,), (NB, 2): children [not similar, similar]; < 0: leaf -1 - c


def similarity(cfg: Any, d: torch.Tensor, log: bool = False) -> torch.Tensor:
    if cfg.similarity == "log":
        d = torch.relu(d)
        return torch.log((d + 1) / (d + cfg.stability))
    root = -torch.sqrt(d.abs() + cfg.stability)
    return root if log else torch.exp(root)


def score(cfg: Any, d: torch.Tensor) -> torch.Tensor:
    """What ProtoPNet's and ProtoPool's last layer weighs: the similarity layer's own output of d, -sqrt(|d| + eps)
    where an exp layer's own params set log_probabilities (CaBRNet's ExpDistance)."""
    return similarity(cfg, d, log=cfg.similarity_log)


def distances32(cfg: Any, z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(B, P, h, w) float32: the squared distance CaBRNet's similarity layer takes, in its order. Legacy layers:
    ProtoPNet's conv(z^2, ones) + (-2 conv(z, p) + |p|^2), ProtoTree's (conv(z^2, ones) + |p|^2) - 2 conv(z, p),
    ones (P, D, 1, 1); ProtoPNetSimilarity and ProtoTreeSimilarity (`cdist`): torch.cdist(z, p) ** 2 over the
    (B, h w, D) feature vectors. Not clamped: CaBRNet's log similarity clamps, its exp one takes |d|."""
    if not cfg.cdist:
        return original_squared_distances(z, prototypes, torch.ones_like(prototypes), tree=cfg.similarity == "exp")
    with full_precision(z):
        b, dim, h, w = z.shape
        vectors = z.float().reshape(b, dim, h * w).transpose(1, 2)  # (B, hw, D)
        d = torch.cdist(vectors, prototypes.float().flatten(1)) ** 2  # (B, hw, P)
        return d.transpose(1, 2).reshape(b, -1, h, w)


def pooled32(d: torch.Tensor, legacy: bool, mean: bool = False) -> torch.Tensor:
    """(B, P): the minimum (or mean) of each map as CaBRNet takes it; with compatibility_mode the original code's
    -max_pool2d(-d) (avg_pool2d), else min (mean) over the flattened map."""
    if legacy:
        return (F.avg_pool2d(d, d.shape[2:]) if mean else -F.max_pool2d(-d, d.shape[2:])).flatten(1)
    return d.flatten(2).mean(dim=2) if mean else d.flatten(2).min(dim=2).values


class ProtoPNetHead(nn.Module):
    distance = "float64"  # or "float32", CaBRNet's own arithmetic (PrototypeAdapter.set_distance)

    def __init__(self, cfg: Any, structure: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.cfg = cfg
        self.prototypes = nn.Parameter(torch.rand(cfg.num_prototypes, cfg.num_features, 1, 1))
        self.register_buffer("proto_class_map", torch.zeros(cfg.num_prototypes, cfg.num_classes))
        self.last_layer = nn.Linear(cfg.num_prototypes, cfg.num_classes, bias=False)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.distance == "float32":
            with full_precision(z):
                d = distances32(self.cfg, z, self.prototypes)
                low = pooled32(d, self.cfg.compatibility)
                act = torch.log((low + 1) / (low + 1e-4)) if self.cfg.compatibility else score(self.cfg, low)
                return similarity(self.cfg, d), self.last_layer(act)
        d = squared_distances(z, self.prototypes)
        low = d.amin(dim=(2, 3))
        act = torch.log((low + 1) / (low + 1e-4)) if self.cfg.compatibility else score(self.cfg, low)
        return similarity(self.cfg, d).float(), self.last_layer(act.float())

    def identity(self) -> torch.Tensor:
        return self.proto_class_map.float()


class ProtoTreeHead(nn.Module):
    distance = "float64"  # or "float32", CaBRNet's own arithmetic (PrototypeAdapter.set_distance)

    def __init__(self, cfg: Any, structure: dict[str, torch.Tensor]):
        super().__init__()
        self.cfg = cfg
        self.prototypes = nn.Parameter(torch.rand(cfg.num_prototypes, cfg.num_features, 1, 1))
        for name in TREE:
            self.register_buffer(name, structure[name].long().clone())
        num_leaves = len(self.branch_children) + 1
        self.leaves = nn.Parameter(torch.zeros(num_leaves, cfg.num_classes))  # CaBRNet's _relative_distribution
        self.derive()

    def derive(self) -> None:
        """The masks and the live prototypes, from the structure (again after the buffers are filled)."""
        off, on = leaf_paths(self.branch_children.cpu(), len(self.branch_children) + 1)
        device = self.prototypes.device if self.prototypes.device.type != "meta" else None
        self.register_buffer("path_off", off.to(device), persistent=False)
        self.register_buffer("path_on", on.to(device), persistent=False)
        self.register_buffer("live", torch.unique(self.branch_prototype.cpu()).to(device), persistent=False)

    def forward32(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CaBRNet's float32 forward: its similarity maps of every prototype (the live ones kept), their maximum
        over the map, and the tree node by node (log space with log_probabilities)."""
        log = self.cfg.log_probabilities
        with full_precision(z):
            root = similarity(self.cfg, distances32(self.cfg, z, self.prototypes)[:, self.live], log=True)
            maps = torch.exp(root)  # (B, P_live, h, w) CaBRNet's similarities (their exp if its layer gives log)
            s = (root if self.cfg.similarity_log else maps).flatten(2).amax(dim=2)  # (B, P_live)
            s = s[:, torch.searchsorted(self.live, self.branch_prototype)]  # (B, NB)
            rows = self.leaves.float()

            def leaf(i: int) -> torch.Tensor:  # (1, C) CaBRNet's leaf distribution: log_softmax, or stable softmax
                x = rows[i:i + 1]
                return F.log_softmax(x, dim=1) if log else torch.softmax(x - x.max(dim=1).values, dim=1)

            out = tree_output(self.branch_children, s, leaf, log)
            return maps, out if log else torch.log(out)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.distance == "float32":
            return self.forward32(z)
        d = squared_distances(z, self.prototypes[self.live])  # (B, P_live, h, w)
        rank = torch.searchsorted(self.live, self.branch_prototype)  # each branch's row among the live ones
        low = d.abs().amin(dim=(2, 3))[:, rank]  # (B, NB) float64
        if self.cfg.log_probabilities:  # CaBRNet's tree reads its similarity layer's output as log s
            log_s = similarity(self.cfg, low, log=self.cfg.similarity_log)
            log_not = torch.log(-torch.expm1(-(log_s.abs() + 1e-7)))  # log1mexp(|log s| + 1e-7)
        else:
            log_s = similarity(self.cfg, low, log=True)
            log_not = torch.log(-torch.expm1(log_s))  # log(1 - s)
        paths = log_not @ self.path_off.t().to(d.dtype) + log_s @ self.path_on.t().to(d.dtype)  # (B, NL)
        leaves = F.log_softmax(self.leaves.to(d.dtype), dim=1)
        logits = torch.logsumexp(paths[:, :, None] + leaves[None], dim=1)
        return similarity(self.cfg, d).float(), logits.float()

    def identity(self) -> torch.Tensor:
        """(P_live, C): 1 for the classes some leaf below the prototype's node decides (CaBRNet's mapping)."""
        below = ((self.path_off + self.path_on) > 0).float()  # (NL, NB)
        top = F.one_hot(self.leaves.argmax(dim=1), self.cfg.num_classes).float()  # (NL, C)
        per_branch = (below.t() @ top) > 0  # (NB, C)
        rank = torch.searchsorted(self.live, self.branch_prototype)
        out = torch.zeros(len(self.live), self.cfg.num_classes, dtype=torch.bool, device=per_branch.device)
        return out.index_put((rank,), per_branch, accumulate=True).float()


class ProtoPoolHead(nn.Module):
    distance = "float64"  # or "float32", CaBRNet's own arithmetic (PrototypeAdapter.set_distance)

    def __init__(self, cfg: Any, structure: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.cfg = cfg
        c, p, n = cfg.num_classes, cfg.num_prototypes, cfg.num_slots
        self.prototypes = nn.Parameter(torch.rand(p, cfg.num_features, 1, 1))
        self.proto_slot_map = nn.Parameter(torch.randn(c, p, n))
        self.last_layer = nn.Linear(c * n, c, bias=False)

    def forward32(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        compat = self.cfg.compatibility
        with full_precision(z):
            slots = torch.softmax(self.proto_slot_map.float(), dim=1) if compat else self.proto_slot_map.float()
            d = distances32(self.cfg, z, self.prototypes)
            low = torch.einsum("bp,cpn->bcn", pooled32(d, compat), slots)
            mean = torch.einsum("bp,cpn->bcn", pooled32(d, compat, mean=True), slots)
            x = (score(self.cfg, low) - score(self.cfg, mean)).flatten(1)
            return similarity(self.cfg, d), self.last_layer(x)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.distance == "float32":
            return self.forward32(z)
        d = squared_distances(z, self.prototypes)
        slots = self.proto_slot_map.to(d.dtype)
        if self.cfg.compatibility:
            slots = torch.softmax(slots, dim=1)
        low = torch.einsum("bp,cpn->bcn", d.amin(dim=(2, 3)), slots)
        mean = torch.einsum("bp,cpn->bcn", d.mean(dim=(2, 3)), slots)
        x = (score(self.cfg, low) - score(self.cfg, mean)).flatten(1).float()
        return similarity(self.cfg, d).float(), self.last_layer(x)

    def identity(self) -> torch.Tensor:
        """(P, C): how many of class c's slots hold prototype p (its argmax over prototypes)."""
        chosen = F.one_hot(self.proto_slot_map.argmax(dim=1), self.cfg.num_prototypes)  # (C, N, P)
        return chosen.sum(dim=1).t().float()


class PIPNetHead(nn.Module):
    def __init__(self, cfg: Any, structure: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.cfg = cfg
        self.last_layer = nn.Linear(cfg.num_prototypes, cfg.num_classes, bias=cfg.bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = torch.softmax(z, dim=1)
        return maps, F.linear(maps.amax(dim=(2, 3)), torch.relu(self.last_layer.weight), self.last_layer.bias)

    def identity(self) -> torch.Tensor:
        return (self.last_layer.weight > 1e-3).t().float()  # CaBRNet's prototype_class_mapping


HEADS = {"protopnet": ProtoPNetHead, "prototree": ProtoTreeHead, "protopool": ProtoPoolHead, "pipnet": PIPNetHead}
