"""ST-ProtoPNet (Wang et al., "Learning Support and Trivial Prototypes for Interpretable Image
Classification", ICCV 2023), reimplemented from its formulas.

Origin: github.com/cwangrun/ST-ProtoPNet (CC BY-NC 4.0). The original saves the state dict of
`model.STProtoPNet` (`{epoch}nopush{acc}.pth`). It has two prototype sets, trivial (T) and
support (S), each with its own add-on, prototypes and last layer over one backbone, and comes
in two variants, told apart by the add-ons' keys:

    full     z_X = conv(conv(up(f(x))))   (`add_on_layers_X.1/.2`; up = x2 bilinear, none after VGG)
             A_X = relu(cos(z_X, p_X))    (B, P, h, w): both normalized over channels
    cropped  z_X = tanh(conv(tanh(conv(f(x)))))   (`add_on_layers_X.0/.2`)
             A_X = conv2d(z_X, p_X / |p_X|)       the projection on the unit prototypes, no relu
    logits = W_T max_hw A_T + W_S max_hw A_S     the summed logits its evaluation predicts with

protobench exposes the sets as 2P prototypes, trivial first: maps [A_T; A_S], identity the
original's allocation (prototype j of a set belongs to class j // (P / C)) for each set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protobench.adapters.protopnet import backbone_classes, default_class_identity
from protobench.checkpoints.loading import Checkpoint
from protobench.checkpoints.pickles import class_name
from protobench.core.precision import full_precision
from protobench.errors import CheckpointError
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, FamilyFacts, ModelInfo
from protobench.models.backbones import build_backbone
from protobench.models.families import FAMILIES
from protobench.models.config import choice, flag
from protobench.models.family_adapter import FamilyAdapter, seeded, take_options
from protobench.models.infer import backbone_from, sub_state

SETS = ("trivial", "support")  # the order of the sets in the maps, the identity and the last layer


@dataclass
class STProtoPNetConfig:
    backbone: str = "vgg19"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 200
    num_prototypes: int = 1000  # P, per set (the original's prototype_shape[0]): 2P maps in all
    prototype_dim: int = 64
    prototype_size: int = 1
    variant: str = "full"  # 'full' (cosine maps) or 'cropped' (projection maps), the repository's two folders
    upsample: bool = False  # full variant: a x2 bilinear upsample before the add-on (all but VGG backbones)
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def set_add_on(cfg: STProtoPNetConfig, in_ch: int) -> nn.Sequential:
    dim = cfg.prototype_dim
    if cfg.variant == "full":
        first = nn.Upsample(scale_factor=2, mode="bilinear") if cfg.upsample else nn.Identity()
        return nn.Sequential(first, nn.Conv2d(in_ch, dim, 1), nn.Conv2d(dim, dim, 1))
    return nn.Sequential(nn.Conv2d(in_ch, dim, 1), nn.Tanh(), nn.Conv2d(dim, dim, 1), nn.Tanh())


class STProtoPNet(nn.Module):
    def __init__(self, cfg: STProtoPNetConfig):
        super().__init__()
        if cfg.variant not in ("full", "cropped"):
            raise ValueError(f"unknown ST-ProtoPNet variant {cfg.variant!r}: use 'full' or 'cropped'")
        self.cfg = cfg
        self.features = build_backbone(cfg.backbone, **dict(cfg.backbone_kwargs))
        shape = (cfg.num_prototypes, cfg.prototype_dim, cfg.prototype_size, cfg.prototype_size)
        for name in SETS:
            setattr(self, f"add_on_layers_{name}", set_add_on(cfg, self.features.out_channels))
            setattr(self, f"prototype_vectors_{name}", nn.Parameter(torch.rand(shape)))
            setattr(self, f"last_layer_{name}", nn.Linear(cfg.num_prototypes, cfg.num_classes, bias=False))
        self.register_buffer("ones", torch.ones(shape))  # unused; kept so the original's state dict loads

    def similarity(self, z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        with full_precision(z):
            z, basis = z.float(), F.normalize(prototypes, p=2, dim=1)
            if self.cfg.variant == "full":
                return torch.relu(F.conv2d(F.normalize(z, p=2, dim=1), basis))
            return F.conv2d(z, basis)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        maps, logits = [], 0
        for name in SETS:
            a = self.similarity(getattr(self, f"add_on_layers_{name}")(f), getattr(self, f"prototype_vectors_{name}"))
            maps.append(a)
            logits = logits + getattr(self, f"last_layer_{name}")(a.amax(dim=(2, 3)))
        return torch.cat(maps, dim=1), logits


def _upsample(ckpt: Checkpoint, variant: str, backbone: str) -> bool:
    """The full variant upsamples after every backbone but VGG (`'VGG' in str(features)` in the original)."""
    pickled = ((ckpt.root.__dict__.get("_modules") or {}).get("add_on_layers_trivial") if ckpt.root is not None
               else None)
    first = (getattr(pickled, "__dict__", {}).get("_modules") or {}).get("0")
    if first is not None:
        return class_name(first) == "torch.nn.modules.upsampling.Upsample"
    return variant == "full" and backbone != "vgg"


@FAMILIES.register("stprotopnet")
class STProtoPNetAdapter(FamilyAdapter):
    """ST-ProtoPNet: trivial and support prototype sets, exposed as 2P prototypes with summed logits."""

    facts = FamilyFacts(
        display_name="ST-ProtoPNet", paper="Wang et al., ICCV 2023", origin="https://github.com/cwangrun/ST-ProtoPNet",
        commit="935aaa1",
        license="CC BY-NC 4.0, non-commercial (full/LICENSE and cropped/LICENSE; none at the root)",
        files="state dict of `model.STProtoPNet` (`{epoch}nopush{acc}.pth`, `{epoch}push{acc}.pth`), from `full/` "
              "or `cropped/`",
        root_classes=("model.STProtoPNet",), pickled_classes=backbone_classes("models."))

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:
        return {f"{part}_{name}" for part in ("prototype_vectors", "last_layer") for name in SETS} \
            <= {k.removesuffix(".weight") for k in keys}

    config_class = STProtoPNetConfig
    config_rules = {"upsample": flag, "variant": choice("full", "cropped")}
    model_class = STProtoPNet

    def __init__(self, model: STProtoPNet):
        cfg = model.cfg
        similarity = "cosine" if cfg.variant == "full" else "projection"
        info = ModelInfo(cfg.img_size, cfg.mean, cfg.std, cfg.num_classes, 2 * cfg.num_prototypes, similarity)
        identity = default_class_identity(cfg.num_prototypes, cfg.num_classes)
        super().__init__(model, info, torch.cat([identity] * len(SETS)))

    @classmethod
    def tiny(cls, seed: int = 0) -> STProtoPNetAdapter:
        cfg = STProtoPNetConfig(backbone="tinycnn", backbone_kwargs={"channels": [4, 8, 8]}, num_classes=3,
                                num_prototypes=3, prototype_dim=4, upsample=True, img_size=32)
        with seeded(seed):
            model = STProtoPNet(cfg)
            for name in SETS:  # non-negative latents, as the prototypes: positive cosines at random weights
                for param in getattr(model, f"add_on_layers_{name}").parameters():
                    param.data.abs_()
            return cls(model)

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> STProtoPNetAdapter:
        opts = take_options(cls.name, options, cls.options, cls.config_rules)
        t, path = ckpt.tensors, ckpt.path
        shape = tuple(t["prototype_vectors_trivial"].shape)
        if len(shape) != 4 or shape[2] != shape[3] or tuple(t["prototype_vectors_support"].shape) != shape:
            raise CheckpointError(f"{path}: the trivial and support prototypes are not two (P, D, k, k) sets "
                                  f"of one shape")
        if "add_on_layers_trivial.1.weight" in t:
            variant = "full"
        elif "add_on_layers_trivial.0.weight" in t:
            variant = "cropped"
        else:
            raise CheckpointError(f"{path}: its add_on_layers_trivial are neither the full variant's "
                                  "(.1, .2) nor the cropped variant's (.0, .2)")
        pickled = (ckpt.root.__dict__.get("_modules") or {}).get("features") if ckpt.root is not None else None
        backbone, kwargs = backbone_from(sub_state(t, "features."), pickled)
        if backbone == "vgg" and variant == "full" and pickled is None:  # full/'s VGG drops the final max-pool
            kwargs["cfg"] = kwargs["cfg"][:-1]  # the one infer_backbone assumes
        root = ckpt.root.__dict__ if ckpt.root is not None else {}
        cfg = STProtoPNetConfig(
            backbone=backbone, backbone_kwargs=kwargs, num_classes=int(t["last_layer_trivial.weight"].shape[0]),
            num_prototypes=int(shape[0]), prototype_dim=int(shape[1]), prototype_size=int(shape[2]), variant=variant,
            upsample=_upsample(ckpt, variant, backbone), img_size=opts["img_size"] or root.get("img_size", 224))
        if cfg.num_prototypes % cfg.num_classes:
            raise CheckpointError(f"{path}: {cfg.num_prototypes} prototypes per set cannot be split evenly over "
                                  f"{cfg.num_classes} classes, as the original allocates them")
        return cls.from_weights(cfg, t, path, original=True)
