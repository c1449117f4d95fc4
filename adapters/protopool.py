"""ProtoPool (Rymarczyk et al., "Interpretable Image Classification with Differentiable
Prototypes Assignment", ECCV 2022), reimplemented from its formulas.

Origin: github.com/gmum/ProtoPool (MIT). The original saves
`{'model_state_dict': ..., 'epoch': ...}` of `PrototypeChooser`; attribute names here
follow it so that state dict loads without renaming (the numbers follow its float32 arithmetic
only with `--distance float32`: docs/adapters.md, departures). Each class c has N slots; slot
(c, n) holds the prototype p* = argmax_p proto_presence[c, p, n].

    d = relu(conv(z^2, ones) - 2 conv(z, p) + |p|^2)         (B, P, h, w) squared L2, float64 (or the original's float32)
    sim(d) = log((d + 1) / (d + 1e-4))  ('log')  or  1 / (d + 1)  ('linear')
    A_p = sim(d) - sim(mean_hw d)                            (B, P, h, w) "focal" similarity
    x[b, c, n] = sim(min_d @ pp) - sim(avg_d @ pp)           pp (C, P, N) = one-hot argmax of proto_presence
    logits = last_layer(x.flatten(1))  or  x.sum(-1) without a last layer

The original evaluates with gumbel_softmax(proto_presence * 1e4, tau=0.5), which draws
fresh Gumbel noise on every call; protobench uses its deterministic limit, the one-hot
argmax (the two differ only for slots whose top two presence logits are within ~1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protobench.adapters.protopnet import backbone_classes
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, FamilyFacts, ModelInfo
from protobench.models.backbones import build_backbone
from protobench.errors import CheckpointError
from protobench.models.families import FAMILIES
from protobench.models.config import flag, sizes
from protobench.models.family_adapter import FamilyAdapter, seeded, take_options
from protobench.models.infer import backbone_from, sub_state
from protobench.checkpoints.loading import Checkpoint
from protobench.core.precision import original_squared_distances, squared_distances


@dataclass
class ProtoPoolConfig:
    backbone: str = "resnet50"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 200
    num_prototypes: int = 202  # P, shared by all classes
    num_descriptive: int = 10  # N, slots per class
    proto_depth: int = 256  # D
    activation: str = "log"  # 'log' or 'linear' (1 / (d + 1)); the weights cannot tell
    use_last_layer: bool = True
    use_thresh: bool = False  # keeps the unused `alfa` parameter so the state dict loads without renaming
    epsilon: float = 1e-4
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class ProtoPool(nn.Module):
    distance = "float64"  # or "float32", the original's arithmetic (PrototypeAdapter.set_distance)

    def __init__(self, cfg: ProtoPoolConfig):
        super().__init__()
        if cfg.activation not in ("log", "linear"):
            raise ValueError(f"unknown ProtoPool activation {cfg.activation!r}: use 'log' or 'linear'")
        self.cfg = cfg
        c, p, n, d = cfg.num_classes, cfg.num_prototypes, cfg.num_descriptive, cfg.proto_depth
        self.features = build_backbone(cfg.backbone, **dict(cfg.backbone_kwargs))
        self.add_on_layers = nn.Sequential(nn.Conv2d(self.features.out_channels, d, 1), nn.Sigmoid())
        self.prototype_vectors = nn.Parameter(torch.rand(p, d, 1, 1))
        self.register_buffer("ones", torch.ones(p, d, 1, 1))
        self.proto_presence = nn.Parameter(nn.init.xavier_normal_(torch.zeros(c, p, n)))  # [c, p, n]
        if cfg.use_thresh:
            self.alfa = nn.Parameter(torch.zeros(1, c, n))
        self.last_layer = nn.Linear(c * n, c, bias=False) if cfg.use_last_layer else nn.Identity()
        if cfg.use_last_layer:  # the original's init: 1 from each class's own slots, 0 elsewhere
            self.last_layer.weight.data.copy_(torch.eye(c).repeat_interleave(n, dim=1))

    def presence(self) -> torch.Tensor:
        """(C, P, N) one-hot slot -> prototype assignment."""
        chosen = self.proto_presence.argmax(dim=1)  # (C, N)
        return F.one_hot(chosen, self.cfg.num_prototypes).permute(0, 2, 1).to(self.proto_presence.dtype)

    def similarity(self, d: torch.Tensor) -> torch.Tensor:
        if self.cfg.activation == "log":
            return torch.log((d + 1) / (d + self.cfg.epsilon))
        return 1 / (d + 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.add_on_layers(self.features(x))
        if self.distance == "float32":  # the original's arithmetic: float32 throughout, avg_pool2d's mean
            d = F.relu(original_squared_distances(z, self.prototype_vectors, self.ones))
            avg = F.avg_pool2d(d, d.shape[2:]).flatten(1)
        else:  # float64 from the distance to the similarities (core.precision.squared_distances), float32 after
            d = F.relu(squared_distances(z, self.prototype_vectors))  # (B, P, h, w)
            avg = d.mean(dim=(2, 3))  # (B, P)
        pp = self.presence().to(d.dtype)
        mixed_min = torch.einsum("bp,cpn->bcn", d.amin(dim=(2, 3)), pp)
        mixed_avg = torch.einsum("bp,cpn->bcn", avg, pp)
        slots = (self.similarity(mixed_min) - self.similarity(mixed_avg)).float()  # (B, C, N)
        logits = self.last_layer(slots.flatten(1)) if self.cfg.use_last_layer else slots.sum(dim=-1)
        return (self.similarity(d) - self.similarity(avg)[..., None, None]).float(), logits


@FAMILIES.register("protopool")
class ProtoPoolAdapter(FamilyAdapter):
    """ProtoPool: prototypes shared by classes through slots; class identity = slot counts."""

    facts = FamilyFacts(
        display_name="ProtoPool", paper="Rymarczyk et al., ECCV 2022", origin="https://github.com/gmum/ProtoPool",
        commit="2bd4288", license="MIT, (c) 2022 Dawid Rymarczyk and others",
        files="`{'model_state_dict', 'epoch'}` (`best_model.pth`, `best_model_push.pth`)",
        # its copy of ProtoPNet's backbones, at the top level or with the repository as package `protopool`
        root_classes=("model.PrototypeChooser", "protopool.model.PrototypeChooser"),
        pickled_classes=backbone_classes("") + backbone_classes("protopool."))

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:
        return any(k.endswith("proto_presence") for k in keys)  # the (C, P, N) slot matrix is ProtoPool's own

    config_class = ProtoPoolConfig
    config_rules = {"use_last_layer": flag, "use_thresh": flag, "num_descriptive": sizes("MAX_SLOTS"),
                    "proto_depth": sizes("MAX_CHANNELS")}
    model_class = ProtoPool
    options = {"img_size": None, "activation": None}

    def __init__(self, model: ProtoPool):
        cfg = model.cfg
        info = ModelInfo(cfg.img_size, cfg.mean, cfg.std, cfg.num_classes, cfg.num_prototypes, f"focal-{cfg.activation}")
        # identity[p, c] = how many of class c's slots hold prototype p (> 0: p belongs to c)
        identity = model.presence().sum(dim=2).t().detach()
        super().__init__(model, info, identity)

    @classmethod
    def tiny(cls, seed: int = 0) -> ProtoPoolAdapter:
        cfg = ProtoPoolConfig(backbone="vgg", backbone_kwargs={"cfg": [4, "M", 8, "M", 8, "M"]}, num_classes=3,
                              num_prototypes=5, num_descriptive=2, proto_depth=4, img_size=32)
        with seeded(seed):
            return cls(ProtoPool(cfg))

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> ProtoPoolAdapter:
        opts = take_options(cls.name, options, cls.options, cls.config_rules)
        t = ckpt.tensors
        try:
            c, p, n = t["proto_presence"].shape
            depth = int(t["prototype_vectors"].shape[1])
        except (KeyError, ValueError):
            raise CheckpointError(f"{ckpt.path}: proto_presence (C, P, N) or prototype_vectors is missing") from None
        root = ckpt.root.__dict__ if ckpt.root is not None else {}
        backbone, kwargs = backbone_from(sub_state(t, "features."), (root.get("_modules") or {}).get("features"))
        cfg = ProtoPoolConfig(backbone=backbone, backbone_kwargs=kwargs, num_classes=int(c), num_prototypes=int(p),
                              num_descriptive=int(n), proto_depth=depth, use_last_layer="last_layer.weight" in t,
                              use_thresh="alfa" in t, img_size=opts["img_size"] or root.get("img_size", 224),
                              activation=opts["activation"] or root.get("prototype_activation_function", "log"))
        return cls.from_weights(cfg, t, ckpt.path, original=True)
