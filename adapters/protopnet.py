"""ProtoPNet (Chen et al., "This Looks Like That", NeurIPS 2019), reimplemented from its formulas.

Origin: github.com/cfchen-duke/ProtoPNet (MIT). Attribute names follow the original
(`features`, `add_on_layers`, `prototype_vectors`, `ones`, `last_layer`) so its state
dicts load without renaming; the numbers follow its arithmetic exactly only with
`distance = "float32"` (`--distance float32`): by default the distance is taken in float64,
which moves maps and logits near pushed prototypes (docs/adapters.md, departures).

    z = add_on(features(x))                                  (B, D, h, w)
    d = relu(conv(z^2, ones) - 2 conv(z, p) + |p|^2)         (B, P, h', w') squared L2, float64 (or the original's float32)
    A = log((d + 1) / (d + eps))  ('log')  or  -d  ('linear')
    logits = last_layer(sim(min_hw d))                        no bias
    focal (interpretability-benchmark fork): logits = last_layer(sim(min_hw d) - sim(mean_hw d))

`ProtoPNetAdapter.load` reads protobench safetensors and the original repository's
whole-model pickles (`torch.save(model)` of `model.PPNet`) or state dicts; the pickle
supplies what the state dict lacks (prototype_class_identity, activation, epsilon, img_size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protobench.adapters import _protopnet_training as training
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, FamilyFacts, ModelInfo
from protobench.models.backbones import build_backbone
from protobench.errors import CheckpointError
from protobench.models.families import FAMILIES
from protobench.models.config import flag
from protobench.models.family_adapter import FamilyAdapter, make_config, seeded, take_options
from protobench.models.infer import backbone_from, sub_state
from protobench.core.precision import original_squared_distances, squared_distances
from protobench.checkpoints.limits import short
from protobench.checkpoints.loading import Checkpoint


BACKBONE_MODULES = {  # ProtoPNet's backbone files and the classes a pickled model holds from them
    "resnet_features": ("ResNet_features", "BasicBlock", "Bottleneck"),
    "vgg_features": ("VGG_features",),
    "densenet_features": ("DenseNet_features", "_DenseBlock", "_DenseLayer", "_Transition"),
}


def backbone_classes(package: str = "") -> tuple[str, ...]:
    """ProtoPNet's backbone classes as pickled by a repository that keeps its copy of them in
    `package` ('' for ProtoPNet itself, 'models.' for TesNet, ...)."""
    return tuple(f"{package}{module}.{name}" for module, names in BACKBONE_MODULES.items() for name in names)


@dataclass
class ProtoPNetConfig:
    backbone: str = "resnet34"  # a name in protobench.models.backbones.BACKBONES
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. TinyCNN channels
    num_classes: int = 200
    num_prototypes: int = 2000
    prototype_dim: int = 128  # D, channels of the add-on output
    prototype_size: int = 1  # spatial side of each prototype (1 in the paper)
    activation: str = "log"  # 'log' or 'linear'
    add_on: str = "bottleneck"  # 'bottleneck' or 'regular' (a.k.a. 'shallow')
    epsilon: float = 1e-4
    focal: bool = False  # the interpretability-benchmark fork's `focal_sim`
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProtoPNetConfig:
        return make_config(cls, data)


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
    distance = "float64"  # or "float32", the original's arithmetic (PrototypeAdapter.set_distance)

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
        """Squared L2 distance of every patch of z to every prototype: (B, P, h', w'), float64
        (core.precision.squared_distances: stable where a prototype meets its part), or with
        `distance = "float32"` the original's own float32 arithmetic, which needs the `ones` buffer
        (all ones in every original checkpoint)."""
        if self.distance == "float32":
            return F.relu(original_squared_distances(z, self.prototype_vectors, self.ones))
        return F.relu(squared_distances(z, self.prototype_vectors))  # clamped as the original

    def similarity(self, d: torch.Tensor) -> torch.Tensor:
        """The prototype activation, in d's dtype (float64 from `distances`: the log's slope of
        1 / epsilon near d = 0 would magnify float32 rounding)."""
        if self.cfg.activation == "log":
            return torch.log((d + 1) / (d + self.cfg.epsilon))
        if self.cfg.activation == "linear":
            return -d
        raise ValueError(f"unknown prototype activation {self.cfg.activation!r}")

    def activations(self, d: torch.Tensor) -> torch.Tensor:
        """(B, P) float32 inputs of the last layer: sim of the min-pooled distance (the original's
        min-pool, then sim), minus sim of the mean distance for the focal fork."""
        act = self.similarity(d.amin(dim=(2, 3)))
        if self.cfg.focal:  # the fork's avg_pool2d in its float32 arithmetic (its bits), else the mean
            mean = F.avg_pool2d(d, d.shape[2:]).flatten(1) if self.distance == "float32" else d.mean(dim=(2, 3))
            act = act - self.similarity(mean)
        return act.float()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.distances(self.conv_features(x))
        return self.similarity(d).float(), self.last_layer(self.activations(d))

    def set_last_layer_incorrect_connection(self, strength: float = -0.5) -> None:
        """ProtoPNet's last-layer init: 1 to the own class, `strength` to the others."""
        identity_t = self.prototype_class_identity.t()
        self.last_layer.weight.data.copy_(identity_t + strength * (1 - identity_t))




def infer_add_on(add_on: dict[str, torch.Tensor], dim: int) -> str:
    """Which add-on kind ('regular' or 'bottleneck') has exactly these weight shapes."""
    shapes = {k: v.shape for k, v in add_on.items()}
    in_ch = int(add_on["0.weight"].shape[1]) if "0.weight" in add_on else 0
    for kind in ("regular", "bottleneck"):
        with torch.device("meta"):  # shapes only: the widths come from the file and may be absurd
            candidate = add_on_layers(kind, in_ch, dim)
        if {k: v.shape for k, v in candidate.state_dict().items()} == shapes:
            return kind
    raise CheckpointError(f"the add-on layers ({', '.join(sorted(shapes)[:4])} ...) are neither ProtoPNet's "
                          "'regular' nor its 'bottleneck' layout")


def _pickled(root: Any, name: str, default: Any) -> Any:
    return default if root is None else root.__dict__.get(name, default)


def original_config(ckpt: Checkpoint, img_size: int | None, activation: str | None) -> tuple[ProtoPNetConfig, torch.Tensor]:
    """Architecture and class identity of an original PPNet/TESNet pickle or state dict."""
    t, root = ckpt.tensors, ckpt.root
    if "ones" not in t or "prototype_vectors" not in t:
        raise CheckpointError(f"{ckpt.path}: no prototype_vectors/ones in the weights")
    num_prototypes, dim, kh, kw = t["prototype_vectors"].shape
    if kh != kw:
        raise CheckpointError(f"{ckpt.path}: {kh}x{kw} prototypes are not supported (square only)")
    features = _pickled(root, "_modules", {}).get("features")
    if getattr(features, "__dict__", {}).get("return_prev_layer"):
        raise CheckpointError(f"{ckpt.path}: backbones with return_prev_layer=True are not supported")
    backbone, kwargs = backbone_from(sub_state(t, "features."), features)
    activation = activation or _pickled(root, "prototype_activation_function", "log")
    if activation not in ("log", "linear"):
        raise CheckpointError(f"{ckpt.path}: prototype activation {short(activation)} is not supported "
                              "(use log or linear)")
    # values from the pickle go in unconverted: from_weights checks their types and ranges
    cfg = ProtoPNetConfig(
        backbone=backbone, backbone_kwargs=kwargs, num_classes=int(t["last_layer.weight"].shape[0]),
        num_prototypes=int(num_prototypes), prototype_dim=int(dim), prototype_size=int(kh), activation=activation,
        add_on=infer_add_on(sub_state(t, "add_on_layers."), int(dim)),
        epsilon=_pickled(root, "epsilon", 1e-4), focal=_pickled(root, "focal_sim", False),
        img_size=img_size or _pickled(root, "img_size", 224),
    )
    return cfg, class_identity(ckpt, cfg.num_prototypes, cfg.num_classes)


def class_identity(ckpt: Checkpoint, num_prototypes: int, num_classes: int) -> torch.Tensor:
    """The pickle's prototype_class_identity (P, C), or for a bare state dict the allocation
    ProtoPNet's constructor makes."""
    identity = _pickled(ckpt.root, "prototype_class_identity", None)
    if identity is None:
        try:
            identity = default_class_identity(num_prototypes, num_classes)
        except ValueError as err:
            raise CheckpointError(f"{ckpt.path}: {err}; load the whole-model pickle, which records the identity") from None
    if not isinstance(identity, torch.Tensor) or tuple(identity.shape) != (num_prototypes, num_classes):
        raise CheckpointError(f"{ckpt.path}: prototype_class_identity does not have shape "
                              f"({num_prototypes}, {num_classes})")
    return identity.float()


@FAMILIES.register("protopnet")
class ProtoPNetAdapter(FamilyAdapter):
    """ProtoPNet with any backbone in protobench.models.backbones; 'log' or 'linear' similarity."""

    facts = FamilyFacts(
        display_name="ProtoPNet", paper="Chen et al., NeurIPS 2019", origin="https://github.com/cfchen-duke/ProtoPNet",
        commit="81bf2b7",
        license="MIT, (c) 2019 Chaofan Chen, Oscar Li, Chaofan Tao, Alina Jade Barnett, Cynthia Rudin",
        files="whole pickle `torch.save(model)` of `model.PPNet` (`{epoch}push{acc}.pth`), or its state dict; also the "
              "interpretability-benchmark fork's pickles (`focal_sim`)",
        root_classes=("model.PPNet",), pickled_classes=backbone_classes(""))

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:
        """PPNet's state dict: prototype_vectors, last_layer and add_on_layers. ProtoPool's has them
        too, beside its slot matrix `proto_presence`, which PPNet has not."""
        ppnet = {"prototype_vectors", "last_layer.weight"} <= keys and any(k.startswith("add_on_layers.") for k in keys)
        return ppnet and not any(k.endswith("proto_presence") for k in keys)

    config_class = ProtoPNetConfig
    config_rules = {"focal": flag}
    model_class = ProtoPNet
    options = {"img_size": None, "activation": None}  # None: from the checkpoint, else the original default

    def __init__(self, model: ProtoPNet):
        cfg = model.cfg
        info = ModelInfo(cfg.img_size, cfg.mean, cfg.std, cfg.num_classes, cfg.num_prototypes, self.similarity_name(cfg))
        super().__init__(model, info, model.prototype_class_identity)

    @staticmethod
    def similarity_name(cfg: ProtoPNetConfig) -> str:
        return f"focal-{cfg.activation}" if cfg.focal else cfg.activation

    @classmethod
    def from_config(cls, cfg: ProtoPNetConfig, seed: int | None = None) -> ProtoPNetAdapter:
        """A freshly initialized model (random weights from `seed`)."""
        if seed is not None:
            torch.manual_seed(seed)
        model = cls.model_class(cfg)
        model.set_last_layer_incorrect_connection()
        return cls(model)

    @classmethod
    def tiny(cls, seed: int = 0) -> ProtoPNetAdapter:
        cfg = ProtoPNetConfig(backbone="tinycnn", backbone_kwargs={"channels": [4, 8, 8]}, num_classes=3,
                              num_prototypes=6, prototype_dim=4, add_on="regular", img_size=32)
        with seeded(seed):
            return cls.from_config(cfg)

    @classmethod
    def build(cls, cfg: ProtoPNetConfig, tensors: dict[str, torch.Tensor]) -> ProtoPNet:
        return cls.model_class(cfg, identity=tensors.get("prototype_class_identity"))

    # ProtoPNet's training (adapters/_protopnet_training.py): its loss terms, push and schedule
    training_schedule = staticmethod(training.schedule)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """CE + 0.8 cluster - 0.08 separation + 1e-4 L1, each term and the total as 'loss',
        with the pass's 'maps' and 'logits'."""
        return training.training_loss(self.model, x, y)

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        m = self.model
        return {"features": list(m.features.parameters()), "add_on": list(m.add_on_layers.parameters()),
                "prototypes": [m.prototype_vectors], "last_layer": list(m.last_layer.parameters())}

    def push(self, loader) -> list:
        """Project each prototype onto its nearest training patch of its class."""
        return training.push(self.model, loader)

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> ProtoPNetAdapter:
        cfg, identity = original_config(ckpt, **take_options(cls.name, options, cls.options, cls.config_rules))
        return cls.from_weights(cfg, {**ckpt.tensors, "prototype_class_identity": identity}, ckpt.path, original=True)
