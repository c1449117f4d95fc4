"""ProtoPNet (Chen et al., "This Looks Like That", NeurIPS 2019), reimplemented from its formulas.

Origin: github.com/cfchen-duke/ProtoPNet (MIT). Attribute names follow the original
(`features`, `add_on_layers`, `prototype_vectors`, `ones`, `last_layer`) so its state
dicts load unchanged.

    z = add_on(features(x))                                  (B, D, h, w)
    d = relu(conv(z^2, ones) - 2 conv(z, p) + |p|^2)         (B, P, h', w') squared L2
    A = log((d + 1) / (d + eps))  ('log')  or  -d  ('linear')
    logits = last_layer(sim(min_hw d))                        no bias
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protobench import train
from protobench.adapter import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, PrototypeAdapter, register_adapter
from protobench.backbones import build_backbone
from protobench.checkpoint import describe_unreadable, load_state, read_protobench, sniff, write_protobench
from protobench.errors import CheckpointError


@dataclass
class ProtoPNetConfig:
    backbone: str = "resnet34"  # a name in protobench.backbones.BACKBONES
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. TinyCNN channels
    num_classes: int = 200
    num_prototypes: int = 2000
    prototype_dim: int = 128  # D, channels of the add-on output
    prototype_size: int = 1  # spatial side of each prototype (1 in the paper)
    activation: str = "log"  # 'log' or 'linear'
    add_on: str = "bottleneck"  # 'bottleneck' or 'regular' (a.k.a. 'shallow')
    epsilon: float = 1e-4
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProtoPNetConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise CheckpointError(f"unknown ProtoPNet config fields {sorted(unknown)}: "
                                  "the checkpoint is from a newer protobench or another family")
        cfg = cls(**data)
        cfg.mean, cfg.std = tuple(cfg.mean), tuple(cfg.std)
        return cfg


def add_on_layers(kind: str, in_ch: int, dim: int) -> nn.Sequential:
    """ProtoPNet's add-on: 1x1 convs down to `dim` channels, ending in a sigmoid."""
    if kind in ("regular", "shallow"):
        return nn.Sequential(nn.Conv2d(in_ch, dim, 1), nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.Sigmoid())
    if kind != "bottleneck":
        raise ValueError(f"unknown add-on type {kind!r}: use 'bottleneck' or 'regular'")
    layers: list[nn.Module] = []
    current = in_ch
    while current > dim or not layers:  # halve the width each pair of convs until it reaches dim
        out = max(dim, current // 2)
        layers += [nn.Conv2d(current, out, 1), nn.ReLU(), nn.Conv2d(out, out, 1)]
        layers.append(nn.ReLU() if out > dim else nn.Sigmoid())
        current //= 2
    return nn.Sequential(*layers)


def default_class_identity(num_prototypes: int, num_classes: int) -> torch.Tensor:
    """Prototype j belongs to class j // (P / C), as ProtoPNet allocates them."""
    if num_prototypes % num_classes:
        raise ValueError(f"{num_prototypes} prototypes cannot be split evenly over {num_classes} classes")
    per_class = num_prototypes // num_classes
    identity = torch.zeros(num_prototypes, num_classes)
    identity[torch.arange(num_prototypes), torch.arange(num_prototypes) // per_class] = 1
    return identity


class ProtoPNet(nn.Module):
    def __init__(self, cfg: ProtoPNetConfig, identity: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.features = build_backbone(cfg.backbone, **dict(cfg.backbone_kwargs))
        self.add_on_layers = add_on_layers(cfg.add_on, self.features.out_channels, cfg.prototype_dim)
        shape = (cfg.num_prototypes, cfg.prototype_dim, cfg.prototype_size, cfg.prototype_size)
        self.prototype_vectors = nn.Parameter(torch.rand(shape))
        self.register_buffer("ones", torch.ones(shape))
        self.last_layer = nn.Linear(cfg.num_prototypes, cfg.num_classes, bias=False)
        if identity is None:
            identity = default_class_identity(cfg.num_prototypes, cfg.num_classes)
        self.register_buffer("prototype_class_identity", identity.float())

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_on_layers(self.features(x))

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared L2 distance of every patch of z to every prototype: (B, P, h', w')."""
        p = self.prototype_vectors
        z2 = F.conv2d(z**2, self.ones)  # (B, P, h', w') patch sums of z^2
        p2 = (p**2).sum(dim=(1, 2, 3)).view(-1, 1, 1)
        return F.relu(z2 - 2 * F.conv2d(z, p) + p2)  # clamped: rounding can go negative

    def similarity(self, d: torch.Tensor) -> torch.Tensor:
        if self.cfg.activation == "log":
            return torch.log((d + 1) / (d + self.cfg.epsilon))
        if self.cfg.activation == "linear":
            return -d
        raise ValueError(f"unknown prototype activation {self.cfg.activation!r}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.distances(self.conv_features(x))
        logits = self.last_layer(self.similarity(d.amin(dim=(2, 3))))  # the original's min-pool, then sim
        return self.similarity(d), logits

    def set_last_layer_incorrect_connection(self, strength: float = -0.5) -> None:
        """ProtoPNet's last-layer init: 1 to the own class, `strength` to the others."""
        identity_t = self.prototype_class_identity.t()
        self.last_layer.weight.data.copy_(identity_t + strength * (1 - identity_t))


@register_adapter("protopnet")
class ProtoPNetAdapter(PrototypeAdapter):
    """ProtoPNet with any backbone in protobench.backbones; 'log' or 'linear' similarity."""

    def __init__(self, model: ProtoPNet):
        cfg = model.cfg
        info = ModelInfo(cfg.img_size, cfg.mean, cfg.std, cfg.num_classes, cfg.num_prototypes, cfg.activation)
        super().__init__(model, info, model.prototype_class_identity)

    @classmethod
    def from_config(cls, cfg: ProtoPNetConfig, seed: int | None = None) -> ProtoPNetAdapter:
        """A freshly initialized model (random weights from `seed`)."""
        if seed is not None:
            torch.manual_seed(seed)
        model = ProtoPNet(cfg)
        model.set_last_layer_incorrect_connection()
        return cls(model)

    @classmethod
    def load(cls, path: str, **options: Any) -> ProtoPNetAdapter:
        kind = sniff(path)
        if kind != "safetensors":
            raise CheckpointError(describe_unreadable(path, kind))
        adapter, config, tensors = read_protobench(path)
        if adapter != cls.name:
            raise CheckpointError(f"{path} holds a {adapter!r} model, not {cls.name!r}: run with --adapter {adapter}")
        cfg = ProtoPNetConfig.from_dict(config)
        model = ProtoPNet(cfg, identity=tensors.get("prototype_class_identity"))
        load_state(model, tensors, path)
        return cls(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """CE + 0.8 cluster - 0.08 separation + 1e-4 L1, each term and the total as 'loss'."""
        return train.training_loss(self.model, x, y)

    def push(self, loader) -> list:
        """Project each prototype onto its nearest training patch of its class (protobench.train.push)."""
        return train.push(self.model, loader)

    def save(self, path: str, extra: dict[str, str] | None = None) -> None:
        write_protobench(path, self.name, asdict(self.model.cfg), self.model.state_dict(), extra)

