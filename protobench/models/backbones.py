"""Convolutional feature extractors used by the prototype-network families.

Built from torchvision parts with random weights (the checkpoint supplies the weights;
nothing is downloaded). Module names mirror the original repositories' `*_features`
classes so that their state dicts load without renaming:
`conv1...layer4` (ResNet), `features.N` (VGG), `features.conv0...norm5` (DenseNet),
`features.0...7` (ConvNeXt, as torchvision names it). The vision transformers (DeiT, CaiT)
live in protobench.models.vit, with timm's names; they give the patch-token grid.

Each builder takes the few numbers that tell one architecture from another, so the
standard nets (`resnet34`, `vgg19`, ...) and the tiny test nets share one code path;
`protobench.models.infer` reads those numbers back from a state dict.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from protobench.checkpoints.limits import check_ints, limit
from protobench.models.vit import VIT_PRESETS, CaiT, VisionTransformer

RESNET_PRESETS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
                  "resnet50": ("bottleneck", [3, 4, 6, 3]), "resnet101": ("bottleneck", [3, 4, 23, 3]),
                  "resnet152": ("bottleneck", [3, 8, 36, 3])}
VGG_PRESETS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
DENSENET_PRESETS = {"densenet121": (32, [6, 12, 24, 16], 64), "densenet161": (48, [6, 12, 36, 24], 96),
                    "densenet169": (32, [6, 12, 32, 32], 64), "densenet201": (32, [6, 12, 48, 32], 64)}
BLOCKS = ("basic", "bottleneck")  # torchvision's BasicBlock and Bottleneck


def _torchvision_models():
    """torchvision.models, imported when a backbone needs it: importing it imports torch._dynamo,
    seconds of start-up that the demo's TinyCNN never needs (docs/performance.md, Demo)."""
    from torchvision import models

    return models


class ResNetFeatures(nn.Module):
    """A ResNet without its pooling and classifier: stem, then four stages of blocks.

    `strides` are the four stages' strides: (1, 2, 2, 2) in torchvision; a family may change
    them, e.g. (1, 2, 1, 1) for 28x28 maps at 224 px.
    """

    def __init__(self, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = (64, 128, 256, 512), strides: Sequence[int] = (1, 2, 2, 2), stem: int = 64):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {block!r}: use 'basic' or 'bottleneck'")
        resnet = _torchvision_models().resnet
        kind = resnet.BasicBlock if block == "basic" else resnet.Bottleneck
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem
        for i, (planes, count, stride) in enumerate(zip(widths, layers, strides)):
            setattr(self, f"layer{i + 1}", _resnet_stage(kind, inplanes, planes, count, stride))
            inplanes = planes * kind.expansion
        self.out_channels = inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _resnet_stage(kind: type, inplanes: int, planes: int, count: int, stride: int) -> nn.Sequential:
    out = planes * kind.expansion
    downsample = None
    if stride != 1 or inplanes != out:  # the shortcut needs a 1x1 conv when shape changes
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
    blocks = [kind(inplanes, planes, stride, downsample)] + [kind(out, planes) for _ in range(1, count)]
    return nn.Sequential(*blocks)


class VGGFeatures(nn.Module):
    """A VGG's convolutional part from its layer list (ints = 3x3 conv widths, 'M' = 2x2 max-pool)."""

    def __init__(self, cfg: Sequence[int | str] | None = None, batch_norm: bool = False):
        super().__init__()
        vgg = _torchvision_models().vgg
        self.features = vgg.make_layers(list(cfg if cfg is not None else vgg.cfgs["A"]), batch_norm)
        self.out_channels = [m for m in self.features if isinstance(m, nn.Conv2d)][-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class DenseNetFeatures(nn.Module):
    """A DenseNet's features plus the final ReLU the prototype networks' copies append (`final_relu`)."""

    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4):
        super().__init__()
        self.features = _torchvision_models().DenseNet(growth_rate, tuple(block_config), num_init_features, bn_size).features
        self.features.add_module("final_relu", nn.ReLU())
        self.out_channels = self.features.norm5.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ConvNeXtFeatures(nn.Module):
    """torchvision's ConvNeXt `features` (no pooling, no classifier).

    `stride1_above`: a family's change: every stride-2 conv with more input channels than this
    gets stride 1 (100 gives 26x26 maps for convnext_tiny at 224 px, 300 gives 13x13).
    """

    def __init__(self, widths: Sequence[int] = (96, 192, 384, 768), depths: Sequence[int] = (3, 3, 9, 3),
                 stride1_above: int | None = None):
        super().__init__()
        nxt = list(widths[1:]) + [None]
        convnext = _torchvision_models().convnext
        settings = [convnext.CNBlockConfig(w, n, d) for w, n, d in zip(widths, nxt, depths)]
        self.features = convnext.ConvNeXt(settings).features
        if stride1_above is not None:
            for conv in self.features.modules():
                if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2) and conv.in_channels > stride1_above:
                    conv.stride = (1, 1)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class TinyCNN(nn.Module):
    """A small VGG-style CNN for the built-in demo and tests: per stage, `convs` 3x3 conv
    (+BN) + ReLU, then a 2x2 max-pool. A 64 px input and 3 stages give an 8x8 map."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128), convs: int = 1, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in channels:
            for _ in range(convs):
                layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(nn.ReLU())
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.out_channels = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _presets() -> dict[str, Callable[[], nn.Module]]:
    table: dict[str, Callable[[], nn.Module]] = {}
    for name, (block, layers) in RESNET_PRESETS.items():
        table[name] = lambda block=block, layers=layers: ResNetFeatures(block, layers)
    for name, key in VGG_PRESETS.items():
        for suffix, bn in (("", False), ("_bn", True)):
            table[name + suffix] = lambda key=key, bn=bn: VGGFeatures(_torchvision_models().vgg.cfgs[key], bn)
    for name, (growth, blocks, init) in DENSENET_PRESETS.items():
        table[name] = lambda growth=growth, blocks=blocks, init=init: DenseNetFeatures(growth, blocks, init)
    table["convnext_tiny"] = ConvNeXtFeatures
    for name, (builder, kwargs) in VIT_PRESETS.items():
        table[name] = lambda builder=builder, kwargs=kwargs: builder(**kwargs)
    return table


# named architectures take no arguments; the generic ones take the numbers protobench.models.infer reads
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **_presets(),
    "resnet": ResNetFeatures,
    "vgg": VGGFeatures,
    "densenet": DenseNetFeatures,
    "convnext": ConvNeXtFeatures,
    "tinycnn": TinyCNN,
    "deit": VisionTransformer,
    "cait": CaiT,
}


def _vgg_layers(cfg: object) -> str | None:
    convs = [v for v in cfg if v != "M"] if isinstance(cfg, (list, tuple)) else None
    if convs is None or not convs or len(cfg) > limit("MAX_BLOCKS") or check_ints(convs, 1, limit("MAX_CHANNELS"),
                                                                                  1, len(convs)):
        return f"a list of up to {limit('MAX_BLOCKS')} conv widths (1..{limit('MAX_CHANNELS')}) and 'M' (max-pool)"
    return None


def _flag(value: object) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _one(lo: int, hi: int) -> Callable[[object], str | None]:
    return lambda value: check_ints([value], lo, hi, 1, 1) and f"an integer in {lo}..{hi}"


def _schema(name: str) -> dict[str, Callable[[object], str | None]]:
    """The keyword arguments the generic builders take, each with its check (None: fine)."""
    width, blocks = limit("MAX_CHANNELS"), limit("MAX_BLOCKS")
    return {
        "resnet": {"block": lambda v: None if isinstance(v, str) and v in BLOCKS else "'basic' or 'bottleneck'",
                   "layers": lambda v: check_ints(v, 1, blocks, 4, 4),
                   "widths": lambda v: check_ints(v, 1, width, 4, 4),
                   "strides": lambda v: check_ints(v, 1, 4, 4, 4), "stem": _one(1, width)},
        "vgg": {"cfg": _vgg_layers, "batch_norm": _flag},
        "densenet": {"growth_rate": _one(1, width), "block_config": lambda v: check_ints(v, 1, blocks),
                     "num_init_features": _one(1, width), "bn_size": _one(1, 64)},
        "convnext": {"widths": lambda v: check_ints(v, 1, width), "depths": lambda v: check_ints(v, 1, blocks),
                     "stride1_above": lambda v: None if v is None else _one(0, width)(v)},
        "tinycnn": {"channels": lambda v: check_ints(v, 1, width), "convs": _one(1, 8), "batch_norm": _flag},
        "deit": _vit_schema(),
        "cait": {**_vit_schema(), "depth_token_only": _one(0, blocks), "mlp_hidden_token": _one(1, 4 * width)},
    }.get(name, {})  # the named architectures (resnet34, vgg16, ...) take no arguments


def _vit_schema() -> dict[str, Callable[[object], str | None]]:
    width = limit("MAX_CHANNELS")
    return {"img_size": _one(limit("MIN_IMG_SIZE"), limit("MAX_IMG_SIZE")), "patch_size": _one(1, 256),
            "embed_dim": _one(1, width), "depth": _one(1, limit("MAX_BLOCKS")), "num_heads": _one(1, width),
            "mlp_hidden": _one(1, 4 * width), "qkv_bias": _flag,
            "eps": lambda v: None if isinstance(v, float) and 0 < v < 1 else "a number in (0, 1)"}


def _vit_problem(kwargs: dict) -> str | None:
    """Shapes a transformer cannot have: heads that do not split the width, patches that do not tile the image."""
    dim, heads = kwargs.get("embed_dim", 1), kwargs.get("num_heads", 1)
    if dim % heads:
        return f"embed_dim {dim} is not divisible by num_heads {heads}"
    size, patch = kwargs.get("img_size", 224), kwargs.get("patch_size", 16)
    if size % patch:
        return f"img_size {size} is not a whole number of {patch} px patches"
    return None


def backbone_problem(name: str, kwargs: object) -> str | None:
    """What is wrong with a backbone's keyword arguments read from a checkpoint (None: nothing)."""
    if not isinstance(kwargs, dict):
        return "not a JSON object"
    schema = _schema(name)
    unknown = sorted(str(k) for k in kwargs if k not in schema)
    if unknown:
        return f"unknown argument {unknown[0][:40]!r} (known: {', '.join(schema) or 'none'})"
    for key, value in kwargs.items():
        wrong = schema[key](value)
        if wrong:
            return f"{key} should be {wrong}"
    if name == "convnext" and len(kwargs.get("widths", (0,) * 4)) != len(kwargs.get("depths", (0,) * 4)):
        return "widths and depths must have the same length"
    return _vit_problem(kwargs) if name in ("deit", "cait") else None


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build a backbone by name; its `out_channels` says how wide its output is."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    if "channels" in kwargs:  # JSON round-trips tuples as lists
        kwargs["channels"] = tuple(kwargs["channels"])
    return BACKBONES[name](**kwargs)
