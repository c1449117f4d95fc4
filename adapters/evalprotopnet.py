"""EvalProtoPNet's model (Huang et al., "Evaluation and Improvement of Interpretability for
Self-Explainable Part-Prototype Networks", ICCV 2023), reimplemented from its formulas.

Origin: github.com/hqhQAQ/EvalProtoPNet (no license file). Its main.py saves
`{'model': state_dict of model.OursNet, 'epoch': ..., 'args': argparse.Namespace}`
(`checkpoints/save_model.pth`); the state dict has no last layer and no class identity, so the
number of classes and the input size come from `args` (`nb_classes`, `input_size`).

    z = add_on(features(x))          'regular' (its default): 1x1 conv + sigmoid; 'bottleneck': ProtoPNet's
    A = conv2d(z, p / |p|)           (B, P, h, w) projection on the unit prototype (its push_forward's maps)
    a = max_hw A                     (B, P) its global max pooling
    logits[c] = sum_{j of c} a_j softmax(w_c)_j (P / C)      w = activation_weight as (C, P / C)

Prototype j belongs to class j // (P / C), as its constructor allocates them. No squared distance:
both `--distance` modes compute the original's own float32 operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protobench.adapters.protopnet import add_on_layers, default_class_identity
from protobench.checkpoints.limits import short
from protobench.checkpoints.loading import Checkpoint
from protobench.core.precision import full_precision
from protobench.errors import CheckpointError
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, FamilyFacts, ModelInfo
from protobench.models.backbones import build_backbone
from protobench.models.families import FAMILIES
from protobench.models.config import choice
from protobench.models.family_adapter import FamilyAdapter, seeded, take_options
from protobench.models.infer import backbone_from, sub_state


ADD_ONS = ("regular", "bottleneck")


@dataclass
class EvalProtoPNetConfig:
    backbone: str = "resnet34"  # a name in protobench.models.backbones.BACKBONES
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 200
    num_prototypes: int = 2000
    prototype_dim: int = 64  # D, train.sh's dim
    add_on: str = "regular"  # ADD_ONS: 'regular' (one conv + sigmoid, main.py's default) or 'bottleneck'
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def evalprotopnet_add_on(kind: str, in_ch: int, dim: int) -> nn.Sequential:
    """Its 'regular' add-on is one 1x1 conv and a sigmoid (ProtoPNet's has two convs); 'bottleneck' is ProtoPNet's."""
    if kind == "regular":
        return nn.Sequential(nn.Conv2d(in_ch, dim, 1), nn.Sigmoid())
    return add_on_layers(kind, in_ch, dim)


class OursNet(nn.Module):
    def __init__(self, cfg: EvalProtoPNetConfig):
        super().__init__()
        if cfg.num_prototypes % cfg.num_classes:
            raise ValueError(f"{cfg.num_prototypes} prototypes cannot be split evenly over {cfg.num_classes} classes")
        self.cfg = cfg
        self.features = build_backbone(cfg.backbone, **dict(cfg.backbone_kwargs))
        self.add_on_layers = evalprotopnet_add_on(cfg.add_on, self.features.out_channels, cfg.prototype_dim)
        shape = (cfg.num_prototypes, cfg.prototype_dim, 1, 1)
        self.prototype_vectors = nn.Parameter(torch.rand(shape))
        self.register_buffer("ones", torch.ones(shape))  # unused by its forward; in its state dict
        self.activation_weight = nn.Parameter(torch.ones(cfg.num_prototypes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.add_on_layers(self.features(x))
        with full_precision(z):  # the projection in fp32, as every prototype layer
            maps = F.conv2d(z.float(), F.normalize(self.prototype_vectors, p=2, dim=1))  # (B, P, h, w)
        c, p = self.cfg.num_classes, self.cfg.num_prototypes
        act = F.max_pool2d(maps, kernel_size=(maps.size(2), maps.size(3))).view(-1, p)
        weight = (F.softmax(self.activation_weight.reshape(c, -1), dim=-1) * (p // c)).flatten()
        return maps, (act * weight).reshape(-1, c, p // c).sum(dim=-1)


def _args(ckpt: Checkpoint) -> dict[str, Any]:
    """The pickled argparse.Namespace's attributes (values from the file: checked where used)."""
    args = ckpt.extras.get("args")
    found = getattr(args, "__dict__", None)
    return found if isinstance(found, dict) else {}


def _whole(args: dict[str, Any], name: str, option: Any, default: Any, path: str) -> Any:
    value = option if option is not None else args.get(name, default)
    if value is None:
        raise CheckpointError(f"{path}: no 'args' with {name} in the checkpoint: pass --adapter-option "
                              f"{'num_classes' if name == 'nb_classes' else 'img_size'}=N")
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"{path}: args.{name} is {short(value)}, not a whole number")
    return value


@FAMILIES.register("evalprotopnet")
class EvalProtoPNetAdapter(FamilyAdapter):
    """EvalProtoPNet's OursNet: projection maps, per-class softmax-weighted max activations."""

    facts = FamilyFacts(
        display_name="EvalProtoPNet", paper="Huang et al., ICCV 2023", origin="https://github.com/hqhQAQ/EvalProtoPNet",
        commit="ab33e5d", license="no license file",
        files="`{'model', 'epoch', 'args'}` (`checkpoints/save_model.pth`): the state dict of `model.OursNet` "
              "and its argparse arguments",
        root_classes=(), pickled_classes=())  # never pickled whole: a state dict and an argparse.Namespace
    config_class = EvalProtoPNetConfig
    config_rules = {"add_on": choice(*ADD_ONS)}  # its two; the other fields follow the shared rules
    model_class = OursNet
    options = {"img_size": None, "num_classes": None}  # None: from the checkpoint's args

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:
        """Prototypes and the per-prototype `activation_weight`, and no last layer."""
        return {"prototype_vectors", "activation_weight"} <= keys and "last_layer.weight" not in keys

    def __init__(self, model: OursNet):
        cfg = model.cfg
        info = ModelInfo(cfg.img_size, cfg.mean, cfg.std, cfg.num_classes, cfg.num_prototypes, "projection")
        super().__init__(model, info, default_class_identity(cfg.num_prototypes, cfg.num_classes))

    @classmethod
    def tiny(cls, seed: int = 0) -> EvalProtoPNetAdapter:
        cfg = EvalProtoPNetConfig(backbone="tinycnn", backbone_kwargs={"channels": [4, 8, 8]}, num_classes=3,
                                  num_prototypes=6, prototype_dim=4, img_size=32)
        with seeded(seed):
            model = OursNet(cfg)
            nn.init.normal_(model.activation_weight)
            return cls(model)

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> EvalProtoPNetAdapter:
        opts = take_options(cls.name, options, cls.options, cls.config_rules)
        t, args = ckpt.tensors, _args(ckpt)
        if "prototype_vectors" not in t or t["prototype_vectors"].dim() != 4 or \
                tuple(t["prototype_vectors"].shape[2:]) != (1, 1):
            raise CheckpointError(f"{ckpt.path}: prototype_vectors is not (P, D, 1, 1), as EvalProtoPNet's are")
        num_prototypes, dim = (int(n) for n in t["prototype_vectors"].shape[:2])
        add_on = sub_state(t, "add_on_layers.")
        kind = "regular" if set(add_on) == {"0.weight", "0.bias"} else "bottleneck"  # the weights must fit it
        backbone, kwargs = backbone_from(sub_state(t, "features."), None)
        cfg = EvalProtoPNetConfig(
            backbone=backbone, backbone_kwargs=kwargs, num_prototypes=num_prototypes, prototype_dim=dim, add_on=kind,
            num_classes=_whole(args, "nb_classes", opts["num_classes"], None, ckpt.path),
            img_size=_whole(args, "input_size", opts["img_size"], 224, ckpt.path))
        if cfg.num_prototypes % cfg.num_classes:
            raise CheckpointError(f"{ckpt.path}: {cfg.num_prototypes} prototypes cannot be split over "
                                  f"{cfg.num_classes} classes")
        return cls.from_weights(cfg, t, ckpt.path, original=True)
