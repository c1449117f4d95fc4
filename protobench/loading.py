"""Any supported checkpoint file -> its weights, what it was saved from, and its model family.

Two kinds of file reach the adapters: protobench's own safetensors (adapter name and
architecture in the metadata) and the files the original research code wrote (whole
pickled models, or dicts holding a state dict). `read_checkpoint` turns both into a
`Checkpoint`; `families` says which adapters could read it; `FamilyAdapter` gives the
built-in adapters one `load` that serves both kinds; `AutoAdapter` (`--adapter auto`)
picks the family itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch

from protobench.adapter import PrototypeAdapter, get_adapter
from protobench.checkpoint import describe_unreadable, load_state, read_protobench, sniff, write_protobench
from protobench.errors import AdapterError, CheckpointError
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
        detect_family(ckpt)  # raises "cannot tell"
    holder = f"a {found[0]!r} model" if ckpt.is_protobench else f"a {FAMILY_NAMES.get(found[0], found[0])} checkpoint"
    raise CheckpointError(f"{ckpt.path} holds {holder}, not {name!r}: run with --adapter {found[0]}")


def take_options(name: str, options: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    """Adapter options merged over their defaults; unknown names are an error."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise AdapterError(f"adapter {name!r} has no option {unknown[0]!r} (its options: {known})")
    return {**allowed, **options}


def make_config(config_class: type, data: dict[str, Any]) -> Any:
    """A config dataclass from JSON metadata: unknown fields are an error, lists become tuples again."""
    unknown = set(data) - {f.name for f in fields(config_class)}
    if unknown:
        raise CheckpointError(f"unknown {config_class.__name__} fields {sorted(unknown)}: "
                              "the checkpoint is from a newer protobench or another family")
    cfg = config_class(**data)
    for f in fields(cfg):
        if isinstance(f.default, tuple):
            setattr(cfg, f.name, tuple(getattr(cfg, f.name)))
    return cfg


class FamilyAdapter(PrototypeAdapter):
    """Base of the built-in adapters: one `load` for protobench files and original checkpoints.

    Subclasses set `config_class` and `model_class` (built as `model_class(cfg)`, or by
    overriding `build`), implement `from_original(ckpt, **options)` and `tiny(seed)`, and
    list their `options` (name -> default; None means "from the checkpoint").
    """

    config_class: ClassVar[type]
    model_class: ClassVar[type]
    options: ClassVar[dict[str, Any]] = {"img_size": None}

    @classmethod
    def load(cls, path: str, **options: Any) -> PrototypeAdapter:
        return cls.from_checkpoint(read_checkpoint(path), **options)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, **options: Any) -> PrototypeAdapter:
        check_family(ckpt, cls.name)
        if ckpt.is_protobench:
            return cls.from_protobench(ckpt, **options)
        return cls.from_original(ckpt, **options)

    @classmethod
    def from_protobench(cls, ckpt: Checkpoint, **options: Any) -> PrototypeAdapter:
        overrides = {k: v for k, v in take_options(cls.name, options, cls.options).items() if v is not None}
        return cls.from_weights(make_config(cls.config_class, {**ckpt.config, **overrides}), ckpt.tensors, ckpt.path)

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> PrototypeAdapter:
        raise NotImplementedError

    @classmethod
    def from_weights(cls, cfg: Any, tensors: dict[str, torch.Tensor], path: str,
                     original: bool = False) -> PrototypeAdapter:
        """Build the model for `cfg` and load `tensors` into it (all must fit)."""
        model = cls.build(cfg, tensors)
        what = (f"the {FAMILY_NAMES.get(cls.name, cls.name)} architecture protobench read from it "
                f"({getattr(cfg, 'backbone', '?')} backbone)") if original else "the architecture in its metadata"
        load_state(model, tensors, path, what)
        return cls(model)

    @classmethod
    def build(cls, cfg: Any, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
        return cls.model_class(cfg)

    @classmethod
    def tiny(cls, seed: int = 0) -> PrototypeAdapter:
        """A tiny random instance (32 px input, a few channels) for tests."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x)

    def config(self) -> dict[str, Any]:
        return asdict(self.model.cfg)

    def save(self, path: str, extra: dict[str, str] | None = None) -> None:
        write_protobench(path, self.name, self.config(), self.model.state_dict(), extra)


class AutoAdapter(PrototypeAdapter):
    """`--adapter auto`: tell the family from the checkpoint, then load it with that adapter."""

    @classmethod
    def load(cls, path: str, **options: Any) -> PrototypeAdapter:
        ckpt = read_checkpoint(path)
        target = get_adapter(detect_family(ckpt))
        if issubclass(target, FamilyAdapter):
            return target.from_checkpoint(ckpt, **options)
        return target.load(path, **options)  # a plugin's own protobench-format file
