"""CaBRNet (aiser-team/cabrnet): its saved model directories, read without its code.

A directory written by CaBRNet's `save_checkpoint` holds `model_arch.yml` (the architecture),
`model_state.pth` (a plain state dict; ProtoTree adds `_extra_state`, the tree as nested plain
values), `dataset.yml` (the preprocessing), `projection_info.csv` and `state.pickle` (RNG states:
never read). protobench maps the names in the YAML through fixed tables (adapters/_cabrnet_arch.py),
takes every size from the tensors (a pruned ProtoPool's YAML keeps its configured prototype
count) and rebuilds ProtoPNet, ProtoTree (pruned included), ProtoPool (pruned included) and PIP-Net
heads from their formulas (adapters/_cabrnet_heads.py). `--ckpt DIR` or `--ckpt DIR/model_state.pth`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protobench.adapters._cabrnet_arch import (ADD_ON, BACKBONE_PARAMS, TORCHVISION, Extractor, fill_add_on_channels,
                                               parse_arch, read_yaml)
from protobench.adapters._cabrnet_heads import HEADS, TREE
from protobench.adapters._cabrnet_state import head_tensors, read_state, test_preprocessing
from protobench.errors import CheckpointError
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, FamilyFacts, ModelInfo
from protobench.models.families import FAMILIES
from protobench.checkpoints.limits import number_problem
from protobench.checkpoints.loading import Checkpoint
from protobench.models.config import choice, flag, sizes
from protobench.models.family_adapter import FamilyAdapter, take_options

ARCH_FILE, STATE_FILE, DATASET_FILE = "model_arch.yml", "model_state.pth", "dataset.yml"


@dataclass
class CaBRNetConfig:
    head: str = "protopnet"  # which of CaBRNet's architectures (adapters/_cabrnet_heads.HEADS)
    arch: str = "resnet50"  # torchvision network name (adapters/_cabrnet_arch.TORCHVISION)
    arch_params: dict[str, Any] = field(default_factory=dict)
    layer: str = "layer4"  # where the network is cut
    stride_divider: list[int] | None = None  # CaBRNet's [ratio, min_channels]
    add_on_spec: list[list[Any]] = field(default_factory=list)  # [name, torch.nn type, constructor arguments]
    similarity: str = "log"  # 'log', 'exp' or 'softmax'
    stability: float = 1e-4
    similarity_log: bool = False  # the similarity layer's own log_probabilities (-sqrt instead of exp(-sqrt))
    cdist: bool = False  # its ProtoPNetSimilarity / ProtoTreeSimilarity (torch.cdist), not a Legacy* layer
    compatibility: bool = False  # CaBRNet's compatibility_mode (its reproduction of the original code)
    log_probabilities: bool = False
    bias: bool = False
    num_classes: int = 200
    num_prototypes: int = 2000
    num_features: int = 128
    num_slots: int = 1
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str)) or (
        isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, (bool, int, float)) for v in value))


def _arch_params(value: Any) -> str | None:
    if not isinstance(value, dict) or not all(k in BACKBONE_PARAMS and _plain(v) for k, v in value.items()):
        return "a table of " + ", ".join(sorted(BACKBONE_PARAMS)) + " with plain values"
    return None


def _stability(value: Any) -> str | None:
    return number_problem(value, 0.0, 1.0)  # 0 for softmax heads, which do not use it


def _layer(value: Any) -> str | None:
    ok = isinstance(value, str) and 0 < len(value) <= 64 and all(part.isidentifier() or part.isdigit()
                                                                  for part in value.split("."))
    return None if ok else "a layer name such as layer4 or features.28"


def _stride_divider(value: Any) -> str | None:
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(type(v) is int and 1 <= v <= 4096 for v in value)
    return None if ok else "none, or [ratio, min_channels]: two whole numbers from 1 to 4096"


def _add_on_spec(value: Any) -> str | None:
    def layer_ok(entry: Any) -> bool:
        return (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str) and len(entry[0]) <= 64
                and entry[1] in ADD_ON and isinstance(entry[2], dict)
                and all(k in ADD_ON[entry[1]] and _plain(v) for k, v in entry[2].items()))
    if isinstance(value, (list, tuple)) and len(value) <= 16 and all(layer_ok(e) for e in value):
        return None
    return "at most 16 [name, layer type, arguments] entries, each type one of " + ", ".join(sorted(ADD_ON))


class CaBRNetNet(nn.Module):
    def __init__(self, cfg: CaBRNetConfig, structure: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.cfg = cfg
        self.extractor = Extractor(cfg.arch, dict(cfg.arch_params), cfg.layer, cfg.stride_divider, cfg.add_on_spec)
        self.classifier = HEADS[cfg.head](cfg, structure)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(self.extractor(x))


def build(cfg: CaBRNetConfig, structure: dict[str, torch.Tensor] | None, seed: int = 0) -> CaBRNetNet:
    """The network, built on the meta device and materialized with seeded values for the part it keeps
    (torchvision's classifier layers, which the cut drops, are never allocated)."""
    if torch.empty(0).device.type == "meta":
        return CaBRNetNet(cfg, structure)
    with torch.device("meta"):
        model = CaBRNetNet(cfg, structure)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point():
                ones = name.endswith(("running_var", "norm.weight", "bn1.weight")) or tensor.dim() == 1 and "weight" in name
                tensor.copy_(torch.ones_like(tensor) if ones else torch.randn(tensor.shape, generator=generator) * 0.1)
            else:
                tensor.zero_()
        if cfg.head == "prototree":
            for name in TREE:
                getattr(model.classifier, name).copy_(structure[name])
            model.classifier.derive()
    return model


def model_files(path: str) -> tuple[Path, Path]:
    """(model_state.pth, model_arch.yml) of a CaBRNet directory or of its state file."""
    where = Path(path)
    state = where / STATE_FILE if where.is_dir() else where
    arch = state.parent / ARCH_FILE
    if not arch.is_file():
        raise CheckpointError(f"{path}: no {ARCH_FILE} beside {state.name}; a CaBRNet model is read from the "
                              "directory its save_checkpoint wrote (model_arch.yml, model_state.pth, dataset.yml)")
    return state, arch


@FAMILIES.register("cabrnet")
class CaBRNetAdapter(FamilyAdapter):
    """CaBRNet's saved models: ProtoPNet, ProtoTree, ProtoPool and PIP-Net heads on torchvision backbones."""

    facts = FamilyFacts(
        display_name="CaBRNet", paper="Xu-Darme et al., xAI 2024", origin="https://github.com/aiser-team/cabrnet",
        commit="1f3ac21, release 1.2", license="LGPL 2.1 (COPYING.LESSER), (c) 2024 CEA",
        files="a directory written by its `save_checkpoint`: `model_arch.yml`, `model_state.pth` (`_extra_state` "
              "for ProtoTree), `dataset.yml`; ProtoPNet, ProtoTree, ProtoPool and PIP-Net, pruned ones included")

    config_class = CaBRNetConfig
    config_rules = {"head": choice(*HEADS), "arch": choice(*sorted(TORCHVISION)), "arch_params": _arch_params,
                    "layer": _layer, "stride_divider": _stride_divider, "add_on_spec": _add_on_spec,
                    "similarity": choice("log", "exp", "softmax"), "stability": _stability, "similarity_log": flag,
                    "cdist": flag, "compatibility": flag, "log_probabilities": flag, "bias": flag,
                    "num_features": sizes("MAX_CHANNELS"), "num_slots": sizes("MAX_PROTOTYPES")}
    model_class = CaBRNetNet
    options = {"img_size": None}

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:
        return any(k.startswith("extractor.convnet.") for k in keys) and any(k.startswith("classifier.") for k in keys)

    @classmethod
    def companion_files(cls, filename: str) -> tuple[str, ...]:
        return (ARCH_FILE, DATASET_FILE) if filename == STATE_FILE else ()

    @classmethod
    def claims_path(cls, path: str) -> bool:
        where = Path(path)
        return (where / ARCH_FILE).is_file() and (where / STATE_FILE).is_file() if where.is_dir() \
            else where.name == STATE_FILE and (where.parent / ARCH_FILE).is_file()

    def __init__(self, model: CaBRNetNet):
        cfg = model.cfg
        identity = model.classifier.identity().detach()
        info = ModelInfo(cfg.img_size, tuple(cfg.mean), tuple(cfg.std), cfg.num_classes, int(identity.shape[0]),
                         f"cabrnet-{cfg.head}-{cfg.similarity}")
        super().__init__(model, info, identity)

    @classmethod
    def load(cls, path: str, **options: Any) -> CaBRNetAdapter:
        if cls.claims_path(path) or Path(path).is_dir():
            state, _ = model_files(path)
            return cls.from_original(Checkpoint(str(state), {}), **options)
        return super().load(path, **options)

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> CaBRNetAdapter:
        opts = take_options(cls.name, options, cls.options)
        state_path, arch_path = model_files(ckpt.path)
        tensors, extra = read_state(str(state_path))
        fields = parse_arch(read_yaml(str(arch_path)), str(arch_path))
        if fields["head"] == "prototree" and (fields["similarity"] != "exp"
                                              or fields["similarity_log"] > fields["log_probabilities"]):
            raise CheckpointError(f"{arch_path}: a ProtoTree with a {fields['similarity']} similarity is not a "
                                  "probability tree protobench can rebuild")
        fields["add_on_spec"] = fill_add_on_channels(fields["add_on_spec"], tensors)
        sizes, state = head_tensors(fields["head"], tensors, extra, str(state_path))
        size, mean, std = test_preprocessing(state_path.parent / DATASET_FILE)
        cfg = CaBRNetConfig(**fields, **sizes, img_size=opts["img_size"] or size, mean=mean, std=std)
        return cls.from_weights(cfg, state, str(state_path), original=True)

    @classmethod
    def from_weights(cls, cfg: CaBRNetConfig, tensors: dict[str, torch.Tensor], path: str,
                     original: bool = False) -> CaBRNetAdapter:
        cfg.stride_divider = list(cfg.stride_divider) if cfg.stride_divider else None
        return super().from_weights(cfg, tensors, path, original)

    @classmethod
    def build(cls, cfg: CaBRNetConfig, tensors: dict[str, torch.Tensor]) -> CaBRNetNet:
        structure = {name: tensors[f"classifier.{name}"] for name in TREE} if cfg.head == "prototree" else None
        if structure is not None:
            from protobench.adapters._cabrnet_state import check_tree

            check_tree(structure, cfg.num_prototypes)
        return build(cfg, structure)

    @classmethod
    def tiny(cls, seed: int = 0) -> CaBRNetAdapter:
        """A ProtoPool head on ResNet-18's stem (CaBRNet's ProtoPool with its slots)."""
        cfg = CaBRNetConfig(head="protopool", arch="resnet18", layer="maxpool", num_classes=3, num_prototypes=5,
                            num_features=4, num_slots=2, img_size=32,
                            add_on_spec=[["conv1", "Conv2d", {"in_channels": 64, "out_channels": 4, "kernel_size": 1}],
                                    ["act", "Sigmoid", {}]])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build(cfg, None, seed)
            model.classifier.prototypes.data.uniform_()
        return cls(model)
