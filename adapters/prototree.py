"""ProtoTree (Nauta et al., "Neural Prototype Trees for Interpretable Fine-grained Image
Recognition", CVPR 2021), reimplemented from its formulas.

Origin: github.com/M-Nauta/ProtoTree (MIT). The original saves the whole tree with
`torch.save(tree)` (`model.pth`); which prototype each decision node uses lives only in
that pickle (`_out_map`, an arbitrary order fixed at construction), so `model_state.pth`
alone cannot be read. protobench flattens the tree into index tensors:

    d = sqrt(|conv(z^2, ones) + |p|^2 - 2 conv(z, p)| + 1e-14)    (B, P, h, w), non-squared L2, float64 or float32
    A_k = exp(-d_{proto(k)})                                        one map per live decision node k
    s_k = exp(-min_hw d_{proto(k)})                                 probability of going right at node k
    out = sum_leaves (prod of s_k or 1 - s_k along the path) * softmax(leaf params)
    logits = log(out), computed in log space

Prototype k of the adapter is the k-th decision node in preorder; prototypes that pruning
cut from the tree are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protobench.adapters._tree import leaf_paths, tree_output
from protobench.adapters.protopnet import backbone_classes
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, FamilyFacts, ModelInfo
from protobench.models.backbones import build_backbone
from protobench.errors import CheckpointError
from protobench.models.families import FAMILIES
from protobench.models.config import flag, sizes
from protobench.models.family_adapter import FamilyAdapter, seeded, take_options
from protobench.models.infer import backbone_from, sub_state
from protobench.checkpoints.loading import Checkpoint
from protobench.checkpoints.limits import limit
from protobench.checkpoints.pickles import StandIn, class_name
from protobench.core.precision import original_squared_distances, squared_distances

STRUCTURE = ("branch_prototype", "branch_children", "branch_index", "leaf_index")


@dataclass
class ProtoTreeConfig:
    backbone: str = "resnet50"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 200
    num_features: int = 256  # D, channels after the add-on
    num_prototypes: int = 511  # rows of prototype_layer (pruned nodes' prototypes included)
    prototype_size: tuple[int, int] = (1, 1)  # (W1, H1)
    log_probabilities: bool = False  # the original's --log_probabilities (adds 1e-7 in log(1 - s))
    kontschieder: bool = False  # leaf distribution = params / sum instead of softmax
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class L2Conv(nn.Module):
    distance = "float64"  # or "float32", the original's arithmetic (PrototypeAdapter.set_distance)

    def __init__(self, num_prototypes: int, dim: int, w1: int, h1: int):
        super().__init__()
        self.prototype_vectors = nn.Parameter(torch.randn(num_prototypes, dim, w1, h1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, P, h, w) L2 distances in float64 (core.precision.squared_distances): near 0 the tree's
        log(1 - exp(-d)) has slope 1 / d, which would magnify float32 cancellation; or the original's."""
        p = self.prototype_vectors
        d2 = original_squared_distances(z, p, torch.ones_like(p), tree=True) if self.distance == "float32" else None
        return torch.sqrt((squared_distances(z, p) if d2 is None else d2).abs() + 1e-14)


class ProtoTree(nn.Module):
    def __init__(self, cfg: ProtoTreeConfig, structure: dict[str, torch.Tensor]):
        super().__init__()
        self.cfg = cfg
        self._net = build_backbone(cfg.backbone, **dict(cfg.backbone_kwargs))
        self._add_on = nn.Sequential(nn.Conv2d(self._net.out_channels, cfg.num_features, 1, bias=False), nn.Sigmoid())
        self.prototype_layer = L2Conv(cfg.num_prototypes, cfg.num_features, *cfg.prototype_size)
        for name in STRUCTURE:
            self.register_buffer(name, structure[name].long())
        num_leaves = len(self.leaf_index)
        self.leaf_dist_params = nn.Parameter(torch.zeros(num_leaves, cfg.num_classes))
        left, right = leaf_paths(self.branch_children, num_leaves)
        self.register_buffer("path_left", left, persistent=False)
        self.register_buffer("path_right", right, persistent=False)

    def leaf_log_distribution(self) -> torch.Tensor:
        params = self.leaf_dist_params
        if not self.cfg.kontschieder:
            return F.log_softmax(params, dim=1)
        ratio = params / params.sum(dim=1, keepdim=True)
        return torch.log(ratio + 1e-10) if self.cfg.log_probabilities else torch.log(ratio)

    def original_log_output(self, min_d: torch.Tensor) -> torch.Tensor:
        """(B, C) log of the tree's output as the original computes it (`--distance float32`): node by node,
        (1 - s) left + s right (--log_probabilities: logsumexp of log(1 - s) + left, log s + right)."""
        log = self.cfg.log_probabilities
        sim = -min_d if log else torch.exp(-min_d)  # (B, NB)

        def leaf(i: int) -> torch.Tensor:  # (B, C), the leaf's distribution as its forward returns it
            p = self.leaf_dist_params[i]
            if self.cfg.kontschieder:
                return (torch.log(p / p.sum() + 1e-10) if log else p / p.sum()).expand(len(min_d), -1)
            return (F.log_softmax(p, dim=0) if log else F.softmax(p - p.max(), dim=0)).expand(len(min_d), -1)

        out = tree_output(self.branch_children, sim, leaf, log)
        return out if log else torch.log(out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.prototype_layer(self._add_on(self._net(x)))[:, self.branch_prototype]  # (B, NB, h, w), float64
        min_d = d.amin(dim=(2, 3))
        if self.prototype_layer.distance == "float32":
            return torch.exp(-d), self.original_log_output(min_d)
        log_right = -min_d  # log s
        shifted = min_d + 1e-7 if self.cfg.log_probabilities else min_d
        log_left = torch.log(-torch.expm1(-shifted))  # log(1 - s), stable
        log_path = log_right @ self.path_right.t().to(d.dtype) + log_left @ self.path_left.t().to(d.dtype)  # (B, NL)
        leaves = self.leaf_log_distribution().to(d.dtype)
        logits = torch.logsumexp(log_path[:, :, None] + leaves[None], dim=1)
        return torch.exp(-d).float(), logits.float()

    def class_identity(self) -> torch.Tensor:
        """(NB, C): share of the leaves below each node whose most likely class is c."""
        below = ((self.path_left + self.path_right) > 0).float()  # (NL, NB)
        top = F.one_hot(self.leaf_dist_params.argmax(dim=1), self.cfg.num_classes).float()  # (NL, C)
        return (below.t() @ top) / below.sum(dim=0)[:, None]


def check_tree(structure: dict[str, torch.Tensor], num_prototypes: int) -> None:
    """Refuse flattened tree tensors that are not one binary tree rooted at branch 0 whose
    branches use prototypes 0..num_prototypes-1 (a loop would never end, a stray index would
    read the wrong map)."""
    protos, children = structure["branch_prototype"], structure["branch_children"]
    nb = len(protos)
    shapes = [tuple(structure[n].shape) for n in STRUCTURE] == [(nb,), (nb, 2), (nb,), (nb + 1,)]
    if not shapes or any(t.is_floating_point() or t.is_complex() for t in structure.values()):
        raise CheckpointError("the tree structure tensors are not integer tensors of matching lengths")
    if not 1 <= nb <= limit("MAX_TREE_BRANCHES") or int(protos.min()) < 0 or int(protos.max()) >= num_prototypes:
        raise CheckpointError(f"the tree has {nb} branches (1..{limit('MAX_TREE_BRANCHES')} allowed) or "
                              f"branches with prototypes outside 0..{num_prototypes - 1}")
    # every branch but the root and every leaf has exactly one parent, and all are reached from the root
    one_parent = sorted(children.flatten().tolist()) == list(range(-nb - 1, 0)) + list(range(1, nb))
    reached, stack = 0, [0] if one_parent else []
    while stack and reached <= nb:
        reached += 1
        stack += [c for c in children[stack.pop()].tolist() if c >= 0]
    if reached != nb:
        raise CheckpointError("the tree structure is not a binary tree rooted at branch 0")


def _flatten(root: Any, out_map: Any, path: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, Any]:
    """Preorder walk of the pickled tree -> structure tensors, leaf params (NL, C), first leaf."""
    if not isinstance(out_map, dict):
        raise CheckpointError(f"{path}: the tree's _out_map is a {type(out_map).__name__}, not a table")
    branches: list[list[int]] = []
    protos, indices, leaves, leaf_indices = [], [], [], []
    seen: set[int] = set()
    stack: list[tuple[Any, int, int]] = [(root, -1, 0)]  # (node, parent branch, side)
    while stack:
        node, parent, side = stack.pop()
        if id(node) in seen or len(seen) > 2 * limit("MAX_TREE_BRANCHES") + 1:
            raise CheckpointError(f"{path}: the pickled tree shares nodes, loops or has more than "
                                  f"{limit('MAX_TREE_BRANCHES')} branches")
        seen.add(id(node))
        code = _visit(node, out_map, path, branches, protos, indices, leaves, leaf_indices, stack)
        if parent >= 0:
            branches[parent][side] = code
    params = [getattr(leaf, "_dist_params", None) for leaf in leaves]
    if not all(isinstance(p, torch.Tensor) and p.shape == params[0].shape and p.dim() == 1 for p in params):
        raise CheckpointError(f"{path}: the tree's leaves do not all hold a class distribution of one length")
    structure = {"branch_prototype": torch.tensor(protos), "branch_children": torch.tensor(branches),
                 "branch_index": torch.tensor(indices), "leaf_index": torch.tensor(leaf_indices)}
    return structure, torch.stack([p.detach() for p in params]), leaves[0]


def _visit(node: Any, out_map: dict, path: str, branches: list, protos: list, indices: list, leaves: list,
           leaf_indices: list, stack: list) -> int:
    """Record one node; return its child code (branch number, or -1 - leaf number)."""
    name = class_name(node)
    index = node.__dict__.get("_index", -1) if isinstance(node, StandIn) else None
    if not isinstance(index, int) or isinstance(index, bool):
        raise CheckpointError(f"{path}: the tree holds a {name} without an integer _index")
    if name.endswith(".Leaf"):
        leaves.append(node)
        leaf_indices.append(index)
        return -len(leaves)
    children = node.__dict__.get("_modules")
    proto = out_map.get(node) if name.endswith(".Branch") else None
    if not isinstance(proto, int) or isinstance(proto, bool) or not isinstance(children, dict) \
            or not {"l", "r"} <= set(children):
        raise CheckpointError(f"{path}: the tree holds a {name} that is not a mapped Branch or a Leaf")
    branches.append([0, 0])
    protos.append(proto)
    indices.append(index)
    stack += [(children["r"], len(branches) - 1, 1), (children["l"], len(branches) - 1, 0)]  # left first: preorder
    return len(branches) - 1


@FAMILIES.register("prototree")
class ProtoTreeAdapter(FamilyAdapter):
    """ProtoTree: soft decision tree over prototype presence; logits = log of its probabilities."""

    facts = FamilyFacts(
        display_name="ProtoTree", paper="Nauta et al., CVPR 2021", origin="https://github.com/M-Nauta/ProtoTree",
        commit="789be85", license="MIT, (c) 2020 M Nauta",
        files="whole pickle `model.pth` of `prototree.prototree.ProtoTree` (not `model_state.pth`: see below)",
        root_classes=("prototree.prototree.ProtoTree",),
        pickled_classes=("prototree.branch.Branch", "prototree.leaf.Leaf", "prototree.node.Node",
                         "util.l2conv.L2Conv2D") + backbone_classes("features."))  # its copy of ProtoPNet's

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:  # its state dict, to say that model.pth is needed
        return "prototype_layer.prototype_vectors" in keys or any(k.endswith("_dist_params") for k in keys)

    config_class = ProtoTreeConfig
    config_rules = {"log_probabilities": flag, "kontschieder": flag, "num_features": sizes("MAX_CHANNELS")}
    model_class = ProtoTree

    def __init__(self, model: ProtoTree):
        cfg = model.cfg
        info = ModelInfo(cfg.img_size, cfg.mean, cfg.std, cfg.num_classes, len(model.branch_prototype), "exp-l2")
        super().__init__(model, info, model.class_identity().detach())

    @classmethod
    def tiny(cls, seed: int = 0) -> ProtoTreeAdapter:
        """Depth 2: three decision nodes (preorder 0, 1, 4), four leaves."""
        kwargs = {"block": "basic", "layers": [1, 1, 1, 1], "widths": [4, 4, 8, 8], "stem": 4, "strides": [1, 2, 1, 1]}
        cfg = ProtoTreeConfig(backbone="resnet", backbone_kwargs=kwargs, num_classes=3, num_features=4,
                              num_prototypes=3, img_size=32)
        children = [[1, 2], [-1, -2], [-3, -4]]  # root -> nodes 1 and 4; each has two leaves
        structure = {"branch_prototype": torch.tensor([2, 0, 1]), "branch_children": torch.tensor(children),
                     "branch_index": torch.tensor([0, 1, 4]), "leaf_index": torch.tensor([2, 3, 5, 6])}
        with seeded(seed):
            model = ProtoTree(cfg, structure)
            nn.init.normal_(model.leaf_dist_params, std=2.0)
        return cls(model)

    @classmethod
    def build(cls, cfg: ProtoTreeConfig, tensors: dict[str, torch.Tensor]) -> ProtoTree:
        missing = [name for name in STRUCTURE if name not in tensors]
        if missing:
            raise CheckpointError(f"the tree structure ({', '.join(missing)}) is missing from the checkpoint")
        structure = {name: tensors[name] for name in STRUCTURE}
        check_tree(structure, cfg.num_prototypes)
        return ProtoTree(cfg, structure)

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> ProtoTreeAdapter:
        opts = take_options(cls.name, options, cls.options, cls.config_rules)
        root = ckpt.root
        if root is None or "_out_map" not in root.__dict__:
            raise CheckpointError(f"{ckpt.path} has ProtoTree weights but not the tree's node-to-prototype map, "
                                  "which only the whole-model pickle holds: load model.pth from the same directory")
        t = ckpt.tensors
        structure, leaf_params, first_leaf = _flatten(root._root, root.__dict__["_out_map"], ckpt.path)
        prototypes = t["prototype_layer.prototype_vectors"]
        add_on = sub_state(t, "_add_on.")
        if set(add_on) != {"0.weight"}:
            raise CheckpointError(f"{ckpt.path}: the add-on ({', '.join(sorted(add_on))}) is not one 1x1 conv without bias")
        backbone, kwargs = backbone_from(sub_state(t, "_net."), root._modules.get("_net"))
        num_prototypes, dim, w1, h1 = prototypes.shape
        cfg = ProtoTreeConfig(
            backbone=backbone, backbone_kwargs=kwargs, num_classes=int(leaf_params.shape[1]), num_features=int(dim),
            num_prototypes=int(num_prototypes), prototype_size=(int(w1), int(h1)),
            log_probabilities=root.__dict__.get("_log_probabilities", False),
            kontschieder=first_leaf.__dict__.get("_kontschieder_normalization", False),
            img_size=opts["img_size"] or 224,
        )
        state = {k: v for k, v in t.items() if not k.startswith("_root.")}  # the leaves come flattened instead
        state.update(structure, leaf_dist_params=leaf_params)
        return cls.from_weights(cfg, state, ckpt.path, original=True)
