"""CaBRNet's model_arch.yml and dataset.yml read as data, and the feature extractor they describe.

CaBRNet itself imports the modules its configuration names (`top_arch`, `classifier`,
`similarity`), calls the classes named there and `eval()`s any `dtype` value. protobench reads
the YAML with `yaml.safe_load` (plain values only), looks each name up in the tables below and
refuses anything else: a file can choose among the architectures listed here, never name code.

The extractor is a torchvision classification network cut after `layer` (its top-level
children in order, or the first items of its `features` Sequential), optionally with
CaBRNet's `stride_divider`, then the add-on layers: a Sequential of the torch.nn layer types
in ADD_ON. Module names follow CaBRNet's (`extractor.convnet.*`, `extractor.add_on.<name>.*`),
so its state dicts load unchanged.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from protobench.checkpoints.limits import limit, short
from protobench.errors import CheckpointError

MAX_YAML_BYTES = 256 << 10  # CaBRNet's configuration files are about 1 KB
HEADS = {  # (top_arch module, name), (classifier module, name) -> the head protobench builds
    "protopnet": (("cabrnet.archs.protopnet.model", "ProtoPNet"), ("cabrnet.archs.protopnet.decision",
                                                                   "ProtoPNetClassifier")),
    "prototree": (("cabrnet.archs.prototree.model", "ProtoTree"), ("cabrnet.archs.prototree.decision",
                                                                   "ProtoTreeClassifier")),
    "protopool": (("cabrnet.archs.protopool.model", "ProtoPool"), ("cabrnet.archs.protopool.decision",
                                                                   "ProtoPoolClassifier")),
    "pipnet": (("cabrnet.archs.pipnet.model", "PIPNet"), ("cabrnet.archs.pipnet.decision", "PIPNetClassifier")),
}
SIMILARITY_MODULE = "cabrnet.core.utils.similarities"
SIMILARITIES = {"LegacyProtoPNetSimilarity": "log", "ProtoPNetSimilarity": "log",
                "LegacyProtoTreeSimilarity": "exp", "ProtoTreeSimilarity": "exp"}
HEAD_PARAMS = {  # classifier params each head reads; the *_init_mode and penalty keys only seed training
    "protopnet": {"num_classes", "num_features", "num_proto_per_class", "proto_init_mode",
                  "incorrect_class_penalty", "compatibility_mode"},
    "prototree": {"num_classes", "num_features", "depth", "leaves_init_mode", "proto_init_mode", "log_probabilities",
                  "compatibility_mode"},
    "protopool": {"num_classes", "num_features", "num_prototypes", "num_slots_per_class", "proto_init_mode",
                  "incorrect_class_penalty", "compatibility_mode"},
    "pipnet": {"num_classes", "num_features", "use_bias", "compatibility_mode"},
}
# torchvision networks whose top-level children run in order (so a cut after one is the network's prefix)
TORCHVISION = frozenset({f"resnet{n}" for n in (18, 34, 50, 101, 152)} | {"wide_resnet50_2", "wide_resnet101_2"}
                        | {f"vgg{n}{bn}" for n in (11, 13, 16, 19) for bn in ("", "_bn")}
                        | {f"densenet{n}" for n in (121, 161, 169, 201)}
                        | {f"convnext_{s}" for s in ("tiny", "small", "base", "large")})
BACKBONE_PARAMS = {"replace_stride_with_dilation", "width_per_group", "groups", "num_classes", "zero_init_residual",
                   "stochastic_depth_prob", "layer_scale", "init_weights", "dropout", "drop_rate", "memory_efficient",
                   "growth_rate", "block_config", "num_init_features", "bn_size"}
ADD_ON = {  # torch.nn layer type -> the constructor arguments protobench passes on
    "Conv2d": {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"},
    "ReLU": {"inplace"}, "Sigmoid": set(), "Tanh": set(), "Identity": set(), "GELU": set(),
    "LeakyReLU": {"negative_slope", "inplace"}, "Softmax": {"dim"}, "Dropout": {"p", "inplace"},
    "BatchNorm2d": {"num_features", "eps", "momentum", "affine", "track_running_stats"},
}


def read_yaml(path: str) -> dict[str, Any]:
    """A CaBRNet configuration file as plain values (yaml.safe_load builds no objects)."""
    try:
        import yaml
    except ImportError:
        raise CheckpointError(f"reading {path} needs PyYAML: pip install 'protobench[cabrnet]'") from None
    try:
        if os.path.getsize(path) > MAX_YAML_BYTES:
            raise CheckpointError(f"{path} is over {MAX_YAML_BYTES >> 10} KB, so not a CaBRNet configuration")
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} is not valid YAML ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a table of settings")
    return data


def _table(value: Any, where: str, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {where} is a {type(value).__name__}, not a table")
    return value


def _plain(params: dict[str, Any], allowed: set[str], where: str, path: str) -> dict[str, Any]:
    """Settings of known names with plain values (numbers, booleans, strings, lists of numbers)."""
    unknown = sorted(str(k) for k in params if k not in allowed)
    if unknown:
        raise CheckpointError(f"{path}: {where} sets {short(unknown[0])}, which protobench does not know "
                              f"(known: {', '.join(sorted(allowed)) or 'none'}); it reads settings, never code")
    for key, value in params.items():
        items = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (int, float, bool, str)) for v in items):
            raise CheckpointError(f"{path}: {where}.{key} is {short(value)}, not a plain value")
    return dict(params)


def _named(entry: Any, where: str, path: str) -> tuple[Any, Any]:
    entry = _table(entry, where, path)
    return entry.get("module"), entry.get("name")


def parse_arch(arch: dict[str, Any], path: str) -> dict[str, Any]:
    """model_arch.yml -> the CaBRNetConfig fields it decides (the tensors give the sizes)."""
    top, classifier = _named(arch.get("top_arch"), "top_arch", path), _table(arch.get("classifier"), "classifier", path)
    heads = [h for h, (t, c) in HEADS.items() if t == top]
    if not heads:
        known = ", ".join(f"{m}.{n}" for (m, n), _ in HEADS.values())
        raise CheckpointError(f"{path}: top_arch {short(top[0])}.{short(top[1])} is not one of the CaBRNet "
                              f"architectures protobench reads ({known}); protobench never imports what a file names")
    head = heads[0]
    if (classifier.get("module"), classifier.get("name")) != HEADS[head][1]:
        raise CheckpointError(f"{path}: classifier {short(classifier.get('module'))}.{short(classifier.get('name'))} "
                              f"is not {'.'.join(HEADS[head][1])}, the classifier of {top[1]}")
    params = _plain(_table(classifier.get("params"), "classifier.params", path), HEAD_PARAMS[head],
                    "classifier.params", path)
    fields: dict[str, Any] = {"head": head, "compatibility": bool(params.get("compatibility_mode", False)),
                              "log_probabilities": bool(params.get("log_probabilities", False)),
                              "bias": bool(params.get("use_bias", False))}
    fields.update(_similarity(arch, head, path))
    fields.update(_extractor(_table(arch.get("extractor"), "extractor", path), path))
    return fields


def _similarity(arch: dict[str, Any], head: str, path: str) -> dict[str, Any]:
    sim = _table(arch.get("similarity"), "similarity", path)
    if head == "pipnet":
        return {"similarity": "softmax", "stability": 0.0, "similarity_log": False, "cdist": False}
    name = sim.get("name", "LegacyProtoTreeSimilarity" if head == "prototree" else "LegacyProtoPNetSimilarity")
    if sim.get("module", SIMILARITY_MODULE) != SIMILARITY_MODULE or name not in SIMILARITIES:
        raise CheckpointError(f"{path}: similarity {short(sim.get('module', ''))} {short(name)} is not one of "
                              f"{', '.join(SIMILARITIES)}; protobench never imports what a file names")
    params = _plain(_table(sim.get("params"), "similarity.params", path), {"stability_factor", "log_probabilities"},
                    "similarity.params", path)
    kind = SIMILARITIES[name]
    stability = params.get("stability_factor", 1e-4 if kind == "log" else 1e-14)
    if isinstance(stability, bool) or not isinstance(stability, (int, float)) or not 0 < stability < 1:
        raise CheckpointError(f"{path}: similarity stability_factor {short(stability)} should be a number in (0, 1)")
    return {"similarity": kind, "stability": float(stability), "cdist": not name.startswith("Legacy"),
            "similarity_log": params.get("log_probabilities") is True}


def _extractor(extractor: dict[str, Any], path: str) -> dict[str, Any]:
    backbone = _table(extractor.get("backbone"), "extractor.backbone", path)
    pipelines = [k for k in extractor if k not in ("backbone", "add_on")]
    layer, add_on = backbone.get("layer"), extractor.get("add_on")
    if layer is None and len(pipelines) == 1:  # the long form: one named pipeline with its source layer
        pipeline = _table(extractor[pipelines[0]], f"extractor.{pipelines[0]}", path)
        layer, add_on = pipeline.get("source_layer"), pipeline.get("add_on")
    elif pipelines or layer is None:
        raise CheckpointError(f"{path}: the extractor has {len(pipelines)} pipelines; protobench reads CaBRNet models "
                              "with one feature layer")
    arch = backbone.get("arch")
    if not isinstance(arch, str) or arch.lower() not in TORCHVISION:
        raise CheckpointError(f"{path}: backbone {short(arch)} is not one of {', '.join(sorted(TORCHVISION))}")
    if not isinstance(layer, str) or not 0 < len(layer) <= 64:
        raise CheckpointError(f"{path}: the extractor's layer {short(layer)} is not a layer name")
    post = _table(backbone.get("postprocess"), "backbone.postprocess", path)
    divider = None
    if post:
        if set(post) != {"stride_divider"}:
            raise CheckpointError(f"{path}: backbone postprocess {short(sorted(post))} is not stride_divider")
        spec = _plain(_table(post["stride_divider"], "stride_divider", path), {"ratio", "min_channels"},
                      "stride_divider", path)
        divider = [spec.get("ratio"), spec.get("min_channels")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4096 for v in divider):
            raise CheckpointError(f"{path}: stride_divider {short(spec)} needs integer ratio and min_channels")
    params = _plain(_table(backbone.get("params"), "backbone.params", path), BACKBONE_PARAMS, "backbone.params", path)
    return {"arch": arch.lower(), "arch_params": params, "layer": layer, "stride_divider": divider,
            "add_on_spec": _add_on(_table(add_on, "add_on", path), path)}


def _add_on(layers: dict[str, Any], path: str) -> list[list[Any]]:
    out = []
    for name, spec in layers.items():
        if name == "init_mode":  # how CaBRNet initialized them before training: no bearing on a trained model
            continue
        spec = _table(spec, f"add_on.{name}", path)
        kind = spec.get("type")
        if kind not in ADD_ON or not isinstance(name, str) or not name.isidentifier():
            raise CheckpointError(f"{path}: add-on layer {short(name)} of type {short(kind)} is not one of "
                                  f"{', '.join(ADD_ON)}; protobench never builds a type a file names")
        out.append([name, kind, _plain(_table(spec.get("params"), f"add_on.{name}.params", path), ADD_ON[kind],
                                       f"add_on.{name}.params", path)])
    if len(out) > limit("MAX_BLOCKS"):
        raise CheckpointError(f"{path}: more than {limit('MAX_BLOCKS')} add-on layers")
    return out


def fill_add_on_channels(add_on: list[list[Any]], tensors: dict[str, torch.Tensor]) -> list[list[Any]]:
    """The add-on with each conv's in_channels read from its weight (CaBRNet infers them by a forward pass)."""
    filled = []
    for name, kind, params in add_on:
        weight = tensors.get(f"extractor.add_on.{name}.weight")
        if kind == "Conv2d" and isinstance(weight, torch.Tensor) and weight.dim() == 4:
            params = {**params, "in_channels": int(weight.shape[1]) * int(params.get("groups", 1))}
        filled.append([name, kind, params])
    return filled


def torchvision_net(arch: str, params: dict[str, Any]) -> nn.Module:
    from torchvision import models

    return models.get_model(arch, weights=None, **params)  # a name from TORCHVISION only


def divide_strides(net: nn.Module, ratio: int, min_channels: int) -> None:
    """CaBRNet's stride_divider: each conv with more than min_channels inputs and strides >= ratio gets strides / ratio."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels > min_channels and min(module.stride) >= ratio:
            module.stride = tuple(s // ratio for s in module.stride)


class Prefix(nn.Module):
    """The first children of a network, run in order, under their own names."""

    def __init__(self, children: OrderedDict[str, nn.Module]):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


def cut(net: nn.Module, layer: str) -> Prefix:
    """`net` up to and including `layer`: a top-level child, or item N of a top-level Sequential ('features.N')."""
    head, _, item = layer.partition(".")
    kept: OrderedDict[str, nn.Module] = OrderedDict()
    for name, child in net.named_children():
        if name != head:
            kept[name] = child
            continue
        if not item:
            kept[name] = child
        elif isinstance(child, nn.Sequential) and item in child._modules:
            items = list(child._modules.items())
            end = [k for k, _ in items].index(item) + 1
            kept[name] = nn.Sequential(OrderedDict(items[:end]))
        else:
            break
        return Prefix(kept)
    raise CheckpointError(f"the backbone has no layer {short(layer)} protobench can cut at "
                          f"(its layers: {', '.join(n for n, _ in net.named_children())}, or features.N)")


def add_on_layers(add_on: list[list[Any]]) -> nn.Sequential:
    return nn.Sequential(OrderedDict((name, getattr(nn, kind)(**params)) for name, kind, params in add_on))


class Extractor(nn.Module):
    def __init__(self, arch: str, arch_params: dict[str, Any], layer: str, stride_divider: list[int] | None,
                 add_on: list[list[Any]]):
        super().__init__()
        net = torchvision_net(arch, arch_params)
        if stride_divider:
            divide_strides(net, *stride_divider)
        self.convnet = cut(net, layer)
        if add_on:
            self.add_on = add_on_layers(add_on)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.convnet(x)
        return self.add_on(z) if hasattr(self, "add_on") else z
