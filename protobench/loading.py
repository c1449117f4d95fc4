"""Any supported checkpoint file -> its weights, what it was saved from, and its model family.

Two kinds of file reach the adapters: protobench's own safetensors (adapter name and
architecture in the metadata) and the files the original research code wrote (whole
pickled models, or dicts holding a state dict). `read_checkpoint` turns both into a
`Checkpoint`; `families` says which adapters could read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from protobench.checkpoint import describe_unreadable, read_protobench, sniff
from protobench.errors import CheckpointError
from protobench.pickles import ROOT_CLASSES, StandIn, class_name, load_pickle, module_state

FAMILY_NAMES = {"protopnet": "ProtoPNet", "tesnet": "TesNet", "protopool": "ProtoPool", "pipnet": "PIP-Net",
                "prototree": "ProtoTree"}
_STATE_KEYS = ("model_state_dict", "state_dict", "model", "net")


@dataclass
class Checkpoint:
    path: str
    tensors: dict[str, torch.Tensor]  # protobench: all tensors; original: the model's state dict
    adapter: str | None = None  # protobench files: the adapter named in the metadata
    config: dict[str, Any] = field(default_factory=dict)  # protobench files: the architecture
    root: StandIn | None = None  # whole-model pickles: the stand-in of the pickled model

    @property
    def is_protobench(self) -> bool:
        return self.adapter is not None

    @property
    def root_class(self) -> str | None:
        return class_name(self.root) if self.root is not None else None


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _unwrap(path: str, obj: Any) -> Checkpoint:
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if key in obj and isinstance(obj[key], (dict, StandIn)):
                return _unwrap(path, obj[key])
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return Checkpoint(path, _strip_module_prefix(dict(obj)))
        keys = ", ".join(map(repr, list(obj)[:5]))
        raise CheckpointError(f"{path} holds a dict without model weights (keys: {keys}); "
                              "expected a state dict or a dict with 'model_state_dict'")
    if isinstance(obj, StandIn):
        if obj.dotted.startswith("torch.nn.parallel.") and "module" in (obj.__dict__.get("_modules") or {}):
            return _unwrap(path, obj._modules["module"])
        return Checkpoint(path, module_state(obj, path), root=obj)
    raise CheckpointError(f"{path} holds a {class_name(obj)}, not a model or its weights")


def read_checkpoint(path: str) -> Checkpoint:
    """Read protobench safetensors or an original torch checkpoint; nothing in the file is executed."""
    path = str(path)
    kind = sniff(path)
    if kind == "safetensors":
        adapter, config, tensors = read_protobench(path)
        return Checkpoint(path, tensors, adapter=adapter, config=config)
    if kind in ("zip", "legacy"):
        return _unwrap(path, load_pickle(path, kind))
    raise CheckpointError(describe_unreadable(path, kind))


def families(ckpt: Checkpoint) -> tuple[str, ...]:
    """The adapters that could read this checkpoint, from its metadata, pickled class or key signature."""
    if ckpt.is_protobench:
        return (ckpt.adapter,)
    if ckpt.root is not None:
        family = ROOT_CLASSES.get(ckpt.root_class or "")
        if family is None:
            raise CheckpointError(f"{ckpt.path} holds a pickled {ckpt.root_class}, which no built-in adapter reads; "
                                  "write an adapter for it (see docs/adapters.md)")
        return (family,)
    keys = set(ckpt.tensors)
    if any(k.endswith("proto_presence") for k in keys):
        return ("protopool",)
    if "_classification.weight" in keys and any(k.startswith("_net.") for k in keys):
        return ("pipnet",)
    if "prototype_layer.prototype_vectors" in keys or any(k.endswith("_dist_params") for k in keys):
        return ("prototree",)
    if {"prototype_vectors", "last_layer.weight"} <= keys and any(k.startswith("add_on_layers.") for k in keys):
        return ("protopnet", "tesnet")  # their state dicts have identical keys
    return ()


def detect_family(ckpt: Checkpoint) -> str:
    found = families(ckpt)
    if len(found) == 1:
        return found[0]
    if not found:
        sample = ", ".join(sorted(ckpt.tensors)[:3]) or "none"
        raise CheckpointError(f"cannot tell which model family {ckpt.path} belongs to (first keys: {sample}); "
                              "pass --adapter NAME (see `protobench adapters`)")
    names = " and ".join(FAMILY_NAMES.get(f, f) for f in found)
    options = " or ".join(f"--adapter {f}" for f in found)
    raise CheckpointError(f"{ckpt.path} is a state dict that {names} share (identical keys); say which with {options}")


def check_family(ckpt: Checkpoint, name: str) -> None:
    """Raise a one-line error when the checkpoint belongs to another adapter than `name`."""
    found = families(ckpt)
    if name in found:
        return
    if not found:
        sample = ", ".join(sorted(ckpt.tensors)[:3]) or "none"
        raise CheckpointError(f"{ckpt.path} does not look like a {FAMILY_NAMES.get(name, name)} checkpoint "
                              f"(first keys: {sample}); see `protobench adapters` for the families protobench reads")
    holder = f"a {found[0]!r} model" if ckpt.is_protobench else f"a {FAMILY_NAMES.get(found[0], found[0])} checkpoint"
    raise CheckpointError(f"{ckpt.path} holds {holder}, not {name!r}: run with --adapter {found[0]}")
