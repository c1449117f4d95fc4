"""The built-in adapters' shared base, and `--adapter auto`.

`FamilyAdapter` gives each family one `load` that serves protobench safetensors and the
original repositories' files, plus `save` in protobench's format; `AutoAdapter` tells
the family from the checkpoint and hands it to that family's adapter.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar

import torch

from protobench.adapter import PrototypeAdapter, get_adapter
from protobench.checkpoint import load_state, write_protobench
from protobench.errors import AdapterError, CheckpointError
from protobench.loading import FAMILY_NAMES, Checkpoint, check_family, detect_family, read_checkpoint


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
        family = detect_family(ckpt)
        try:
            target = get_adapter(family)
        except AdapterError as err:  # a protobench file written by a plugin that is not installed here
            raise AdapterError(f"{path} was written by adapter {family!r}, which is not installed "
                               f"({err}); install its package or pass --adapter package.module:Class") from None
        if issubclass(target, FamilyAdapter):
            return target.from_checkpoint(ckpt, **options)
        return target.load(path, **options)  # a plugin's own protobench-format file
