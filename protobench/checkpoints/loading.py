"""Any supported checkpoint file -> its weights and what it was saved from.

Two kinds of file reach the adapters: protobench's own safetensors (adapter name and
architecture in the metadata) and the files the original research code wrote (whole
pickled models, or dicts holding a state dict). `read_checkpoint` turns both into a
`Checkpoint`; which family it is, `protobench.models.families` tells from the registered
families' declarations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection

import torch

from protobench.checkpoints.formats import describe_unreadable, open_checkpoint, read_protobench, sniff_bytes
from protobench.errors import CheckpointError
from protobench.checkpoints.limits import limit
from protobench.checkpoints.pickles import StandIn, class_name, load_pickle

_STATE_KEYS = ("model_state_dict", "state_dict", "model", "net")


@dataclass
class Checkpoint:
    path: str
    tensors: dict[str, torch.Tensor]  # protobench: all tensors; original: the model's state dict
    adapter: str | None = None  # protobench files: the adapter named in the metadata
    config: dict[str, Any] = field(default_factory=dict)  # protobench files: the architecture
    root: StandIn | None = None  # whole-model pickles: the stand-in of the pickled model
    classes: tuple[str, ...] | None = None  # protobench files: the class names, where recorded
    extras: dict[str, Any] = field(default_factory=dict)  # a wrapping dict's other entries ('epoch', 'args', ...)

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


def _check_key(path: str, key: Any) -> str:
    if not isinstance(key, str) or len(key) > limit("MAX_KEY_LENGTH"):
        raise CheckpointError(f"{path}: a state-dict key is not a name of at most {limit('MAX_KEY_LENGTH')} "
                              "characters (raise PROTOBENCH_MAX_KEY_LENGTH if it is genuine)")
    return key


def module_state(obj: Any, path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict of a pickled module tree (stand-ins), as nn.Module.state_dict() gives it.

    Shared submodules appear under every name, as in torch. The walk is bounded (modules,
    entries, depth) and refuses loops: memo references let a small pickle describe an
    exponentially large tree.
    """
    state: dict[str, torch.Tensor] = {}
    left = {"modules": limit("MAX_MODULES"), "entries": limit("MAX_TENSORS")}
    on_path: set[int] = set()

    def walk(node: StandIn, prefix: str, depth: int) -> None:
        left["modules"] -= 1
        if depth > limit("MAX_NESTING") or left["modules"] < 0 or id(node) in on_path:
            raise CheckpointError(f"{path}: the pickled module tree loops, is nested deeper than "
                                  f"{limit('MAX_NESTING')} or has more than {limit('MAX_MODULES')} modules")
        on_path.add(id(node))
        attrs = node.__dict__
        skip = attrs.get("_non_persistent_buffers_set") or set()
        for name, value in _table(path, attrs, "_parameters", left) + _table(path, attrs, "_buffers", left):
            if value is not None and (not isinstance(skip, (set, frozenset)) or name not in skip):
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"{path}: {_check_key(path, prefix + name)} is a {type(value).__name__}, "
                                          "not a tensor")
                state[_check_key(path, prefix + name)] = value.detach()
        for name, child in _table(path, attrs, "_modules", left):
            if child is not None and not isinstance(child, StandIn):
                raise CheckpointError(f"{path}: module {_check_key(path, prefix + name)} is a "
                                      f"{type(child).__name__}, not a module")
            if child is not None:
                walk(child, _check_key(path, f"{prefix}{name}."), depth + 1)
        on_path.discard(id(node))

    walk(obj, "", 0)
    return state


def _table(path: str, attrs: dict[str, Any], table: str, left: dict[str, int]) -> list[tuple[str, Any]]:
    """A pickled module's _parameters, _buffers or _modules, checked to be a table of names."""
    found = attrs.get(table) or {}
    if not isinstance(found, dict) or not all(isinstance(k, str) for k in found):
        raise CheckpointError(f"{path}: a pickled module's {table} is a {type(found).__name__}, not a table of names")
    left["entries"] -= len(found)
    if left["entries"] < 0:
        raise CheckpointError(f"{path}: the pickled model has more than {limit('MAX_TENSORS')} parameters, buffers "
                              "and submodules (raise PROTOBENCH_MAX_TENSORS if it is genuine)")
    return list(found.items())


def _unwrap(path: str, obj: Any, depth: int = 0) -> Checkpoint:
    if isinstance(obj, dict) and depth < 4:
        for key in _STATE_KEYS:
            if key in obj and isinstance(obj[key], (dict, StandIn)):
                found = _unwrap(path, obj[key], depth + 1)
                found.extras = {**{k: v for k, v in obj.items() if k != key and isinstance(k, str)}, **found.extras}
                return found
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return Checkpoint(path, _strip_module_prefix({_check_key(path, k): v for k, v in obj.items()}))
        keys = ", ".join(repr(str(k)[:40]) for k in list(obj)[:5])
        raise CheckpointError(f"{path} holds a dict without model weights (keys: {keys}); "
                              "expected a state dict or a dict with 'model_state_dict'")
    if isinstance(obj, StandIn):
        modules = obj.__dict__.get("_modules")
        if class_name(obj).startswith("torch.nn.parallel.") and isinstance(modules, dict) and "module" in modules:
            return _unwrap(path, modules["module"], depth + 1)
        return Checkpoint(path, module_state(obj, path), root=obj)
    raise CheckpointError(f"{path} holds a {class_name(obj)}, not a model or its weights")


def read_checkpoint(path: str, classes: Collection[str] = ()) -> Checkpoint:
    """Read protobench safetensors or an original torch checkpoint; nothing in the file is executed.

    `classes`: the model classes a pickle may name besides torch.nn's, each read as an inert
    stand-in (the registered families' `protobench.models.families.pickled_classes()`)."""
    path = str(path)
    with open_checkpoint(path) as f:
        kind = sniff_bytes(f.read(64))
        if kind in ("zip", "legacy"):
            f.seek(0)
            return _unwrap(path, load_pickle(path, kind, f, classes))
    if kind == "safetensors":
        adapter, config, tensors, classes = read_protobench(path, with_classes=True)
        return Checkpoint(path, tensors, adapter=adapter, config=config, classes=classes)
    raise CheckpointError(describe_unreadable(path, kind))
