"""Convolutional feature extractors used by the ProtoPNet family.

Built from torchvision with `weights=None` (the checkpoint supplies the weights; nothing
is downloaded). Module names mirror the ProtoPNet repository's `*_features` classes so
that its state dicts load unchanged:
`features.conv1...layer4` (ResNet), `features.features.N` (VGG), `features.features.*` (DenseNet).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision import models


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without its pooling and classifier."""

    def __init__(self, arch: str):
        super().__init__()
        net = getattr(models, arch)(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        last = self.layer4[-1]
        self.out_channels = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class VGGFeatures(nn.Module):
    """A torchvision VGG's convolutional part, final max-pool included (7x7 at 224 px)."""

    CONFIGS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}

    def __init__(self, arch: str):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers  # only the conv part: no 100M-weight classifier

        depth, _, bn = arch.partition("_")
        self.features = make_layers(cfgs[self.CONFIGS[depth]], batch_norm=bool(bn))
        self.out_channels = [m for m in self.features if isinstance(m, nn.Conv2d)][-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class DenseNetFeatures(nn.Module):
    """A torchvision DenseNet's features plus the final ReLU ProtoPNet appends (`final_relu`)."""

    def __init__(self, arch: str):
        super().__init__()
        self.features = getattr(models, arch)(weights=None).features
        self.features.add_module("final_relu", nn.ReLU())
        self.out_channels = self.features.norm5.num_features

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


def _family(cls: type, archs: list[str]) -> dict[str, Callable[..., nn.Module]]:
    return {arch: (lambda arch=arch: cls(arch)) for arch in archs}


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **_family(ResNetFeatures, ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]),
    **_family(VGGFeatures, [f"vgg{n}{bn}" for n in (11, 13, 16, 19) for bn in ("", "_bn")]),
    **_family(DenseNetFeatures, ["densenet121", "densenet161", "densenet169", "densenet201"]),
    "tinycnn": TinyCNN,
}


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build a backbone by name; its `out_channels` says how wide its output is."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    if "channels" in kwargs:  # JSON round-trips tuples as lists
        kwargs["channels"] = tuple(kwargs["channels"])
    return BACKBONES[name](**kwargs)
