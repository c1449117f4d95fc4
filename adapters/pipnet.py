"""PIP-Net (Nauta et al., "PIP-Net: Patch-Based Intuitive Prototypes for Interpretable
Image Classification", CVPR 2023), reimplemented from its formulas.

Origin: github.com/M-Nauta/PIPNet (no license file). The original saves
`{'model_state_dict': ..., 'optimizer_..._state_dict': ...}` of an nn.DataParallel
model (keys `module._net.*`, `module._classification.*`), in files without an extension.
Its prototypes are the backbone's output channels:

    A = softmax over P of add_on(_net(x))       (B, P, h, w); each location sums to 1
    pooled = max_hw A, set to 0 where < 0.1     (the original's inference=True, as its evaluation runs)
    logits = pooled @ relu(W)^T (+ bias)        non-negative scores

The weights cannot tell the backbone's strides: `net` says which PIP-Net variant it was
(convnext_tiny_26 or convnext_tiny_13; ResNets always use PIP-Net's stride-1 stages 3 and 4).
The original records it in its log directory, `<log_dir>/metadata/args.txt` beside
`<log_dir>/checkpoints/`: protobench reads `net` (and `image_size`) from there as text, and
otherwise assumes convnext_tiny_26 with a warning that names the option.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, FamilyFacts, ModelInfo
from protobench.models.backbones import build_backbone
from protobench.errors import AdapterError, CheckpointError, ProtobenchWarning
from protobench.models.families import FAMILIES
from protobench.models.config import flag
from protobench.models.family_adapter import FamilyAdapter, seeded, take_options
from protobench.models.infer import backbone_from, sub_state
from protobench.checkpoints.limits import short
from protobench.checkpoints.loading import Checkpoint

CONVNEXT_VARIANTS = {"convnext_tiny_26": 100, "convnext_tiny_13": 300}  # --net -> stride-1 threshold
RESNET_STRIDES = [1, 2, 1, 1]  # PIP-Net's copy of resnet_features: no stride in layer3 and layer4
RELEVANT = 1e-3  # PIP-Net's threshold on relu(W) for "prototype p is relevant to class c"
ARGS_BYTES = 64 << 10  # the original's args.txt is under 1 KB; anything past this is not one


@dataclass
class PIPNetConfig:
    backbone: str = "convnext"
    backbone_kwargs: dict[str, Any] = field(default_factory=lambda: {"stride1_above": 100})
    num_classes: int = 200
    num_prototypes: int = 768  # P = backbone channels, or num_features with the extra 1x1 conv
    add_on_conv: bool = False  # the original's --num_features > 0 (a 1x1 conv before the softmax)
    bias: bool = False  # the original's --bias
    inference: bool = True  # zero pooled similarities below 0.1, as the original's evaluation does
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class NonNegLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features).normal_(1.0, 0.1))
        self.normalization_multiplier = nn.Parameter(torch.full((1,), 2.0))  # unused by forward
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, torch.relu(self.weight), self.bias)


class PIPNet(nn.Module):
    def __init__(self, cfg: PIPNetConfig):
        super().__init__()
        self.cfg = cfg
        self._net = build_backbone(cfg.backbone, **dict(cfg.backbone_kwargs))
        conv = [nn.Conv2d(self._net.out_channels, cfg.num_prototypes, 1)] if cfg.add_on_conv else []
        self._add_on = nn.Sequential(*conv, nn.Softmax(dim=1))
        self._classification = NonNegLinear(cfg.num_prototypes, cfg.num_classes, cfg.bias)
        # the original also registers normalization_multiplier as `_multiplier`; one copy is enough here

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self._add_on(self._net(x))  # (B, P, h, w)
        pooled = maps.amax(dim=(2, 3))
        if self.cfg.inference:
            pooled = torch.where(pooled < 0.1, torch.zeros_like(pooled), pooled)
        return maps, self._classification(pooled)


Recorded = tuple[Path, dict[str, str]] | None  # what run_args found


def run_args(checkpoint: str) -> Recorded:
    """The original's `<log_dir>/metadata/args.txt` for a file in `<log_dir>/checkpoints/`: its
    `key: value` lines as text (strings unquoted), or None when there is none. Only read, never run."""
    path = Path(checkpoint).parent
    args = path.parent / "metadata" / "args.txt"
    if path.name != "checkpoints":
        return None
    try:
        if not args.is_file():  # a regular file only: never a FIFO or a device
            return None
        with open(args, "rb") as f:
            data = f.read(ARGS_BYTES + 1)
    except OSError as err:
        warnings.warn(f"cannot read {args} ({err.strerror or err}): ignored", ProtobenchWarning, stacklevel=2)
        return None
    if len(data) > ARGS_BYTES:
        warnings.warn(f"{args} is over {ARGS_BYTES >> 10} KB, so not the original's args.txt: ignored",
                      ProtobenchWarning, stacklevel=2)
        return None
    found = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(": ")
        if sep:  # save_args writes '{key}: {val}', strings in single quotes without escaping
            found[key.strip()] = value[1:-1] if len(value) > 1 and value[0] == value[-1] == "'" else value.strip()
    return args, found


def _variant(ckpt: Checkpoint, backbone: str, net: str | None, recorded: Recorded) -> str | None:
    """`net` as given, else as the run's args.txt records it (None: not recorded); checked against the weights."""
    if net is not None:
        if not isinstance(net, str) or (backbone == "convnext") != (net in CONVNEXT_VARIANTS):
            allowed = f"one of {', '.join(CONVNEXT_VARIANTS)}" if backbone == "convnext" else "a resnet"
            raise AdapterError(f"{ckpt.path} has a {backbone} backbone; net must be {allowed}, not {short(net)}")
        return net
    if recorded is None or "net" not in recorded[1]:
        return None
    args, net = recorded[0], recorded[1]["net"]
    if (backbone == "convnext") != (net in CONVNEXT_VARIANTS):
        raise CheckpointError(f"{args} says net {short(net)}, but {ckpt.path} has a {backbone} backbone: "
                              "is it the args of another run? pass --adapter-option net=... to say which")
    return net


def _image_size(recorded: Recorded) -> int:
    """The run's --image_size from its args.txt, else the original's default, 224."""
    value = recorded[1].get("image_size", "224") if recorded is not None else "224"
    if not value.isdigit() or len(value) > 6:
        raise CheckpointError(f"{recorded[0]} says image_size {short(value)}, which is not a size in pixels; "
                              "pass --adapter-option img_size=N")
    return int(value)  # its range is checked with the rest of the config


def _backbone(ckpt: Checkpoint, net: str | None, stride1_above: int | None,
              recorded: Recorded) -> tuple[str, dict[str, Any]]:
    if stride1_above is not None and (isinstance(stride1_above, bool) or not isinstance(stride1_above, int)):
        raise AdapterError(f"adapter option stride1_above={short(stride1_above)} should be an integer")
    name, kwargs = backbone_from(sub_state(ckpt.tensors, "_net."), strides=RESNET_STRIDES)
    if name not in ("convnext", "resnet"):
        raise CheckpointError(f"{ckpt.path}: PIP-Net has ConvNeXt or ResNet backbones, this one is a {name}")
    if name == "resnet" and net is None:
        return name, kwargs  # every ResNet variant has the same strides
    net = _variant(ckpt, name, net, recorded)
    if name == "convnext" and stride1_above is None:
        if net is None:
            warnings.warn(f"{ckpt.path}: no metadata/args.txt in its log directory says which PIP-Net ConvNeXt this "
                          "is; assumed convnext_tiny_26 (26x26 maps at 224 px): pass --adapter-option "
                          "net=convnext_tiny_13 if it is that one", ProtobenchWarning, stacklevel=2)
        stride1_above = CONVNEXT_VARIANTS[net or "convnext_tiny_26"]
    if name == "convnext":
        kwargs["stride1_above"] = stride1_above
    return name, kwargs


@FAMILIES.register("pipnet")
class PIPNetAdapter(FamilyAdapter):
    """PIP-Net: softmax-over-prototypes maps; class identity = relu(W) where above 1e-3."""

    facts = FamilyFacts(
        display_name="PIP-Net", paper="Nauta et al., CVPR 2023", origin="https://github.com/M-Nauta/PIPNet",
        commit="12c4da7", license="no license file",
        files="`{'model_state_dict', 'optimizer_..._state_dict'}` of an `nn.DataParallel` model, files without "
              "extension (`checkpoints/net_trained_last`)",
        root_classes=("pipnet.pipnet.PIPNet",), pickled_classes=("pipnet.pipnet.NonNegLinear",))

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:
        return "_classification.weight" in keys and any(k.startswith("_net.") for k in keys)

    config_class = PIPNetConfig
    config_rules = {"add_on_conv": flag, "bias": flag, "inference": flag}
    model_class = PIPNet
    options = {"img_size": None, "inference": None, "net": None, "stride1_above": None}

    def __init__(self, model: PIPNet):
        cfg = model.cfg
        info = ModelInfo(cfg.img_size, cfg.mean, cfg.std, cfg.num_classes, cfg.num_prototypes, "softmax")
        weight = torch.relu(model._classification.weight.detach()).t()  # (P, C)
        super().__init__(model, info, torch.where(weight > RELEVANT, weight, torch.zeros_like(weight)))

    @classmethod
    def tiny(cls, seed: int = 0) -> PIPNetAdapter:
        kwargs = {"widths": [4, 8, 8, 6], "depths": [1, 1, 1, 1], "stride1_above": 6}  # 2x2 maps at 32 px
        cfg = PIPNetConfig(backbone_kwargs=kwargs, num_classes=3, num_prototypes=6, img_size=32)
        with seeded(seed):
            return cls(PIPNet(cfg))

    @classmethod
    def from_protobench(cls, ckpt: Checkpoint, **options: Any) -> PIPNetAdapter:
        if options.get("net") is not None or options.get("stride1_above") is not None:
            raise AdapterError(f"{ckpt.path} already records its backbone; net and stride1_above apply to original files")
        return super().from_protobench(ckpt, **options)

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> PIPNetAdapter:
        opts = take_options(cls.name, options, cls.options, cls.config_rules)
        t = ckpt.tensors
        if "_classification.weight" not in t:
            raise CheckpointError(f"{ckpt.path}: no _classification.weight in the weights")
        recorded = run_args(ckpt.path)
        backbone, kwargs = _backbone(ckpt, opts["net"], opts["stride1_above"], recorded)
        num_classes, num_prototypes = t["_classification.weight"].shape
        cfg = PIPNetConfig(backbone=backbone, backbone_kwargs=kwargs, num_classes=int(num_classes),
                           num_prototypes=int(num_prototypes), add_on_conv="_add_on.0.weight" in t,
                           bias="_classification.bias" in t, img_size=opts["img_size"] or _image_size(recorded),
                           inference=True if opts["inference"] is None else bool(opts["inference"]))
        t = {k: v for k, v in t.items() if k != "_multiplier"}  # the same parameter as the classifier's
        return cls.from_weights(cfg, t, ckpt.path, original=True)
