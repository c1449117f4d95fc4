"""The built-in adapters' shared base.

`FamilyAdapter` gives each family one `load` that serves protobench safetensors and the
original repositories' files, plus `save` in protobench's format. (`--adapter auto` is
`protobench.models.lookup.AutoAdapter`.)
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from typing import Any, ClassVar, Iterator

import torch

from protobench.models.adapter import PrototypeAdapter
from protobench.models.detect import check_family, read_family_checkpoint
from protobench.checkpoints.formats import check_state, write_protobench
from protobench.errors import AdapterError, CheckpointError, OptionError
from protobench.checkpoints.limits import short
from protobench.models.config import Rule, config_problem, field_problem
from protobench.checkpoints.loading import Checkpoint

# inputs up to this size (px) are checked by one real forward pass (FamilyAdapter.probe), whose memory stays
# small: a 64 px activation of the widest layer a checkpoint may declare (MAX_CHANNELS) is 256 MiB
REAL_PROBE_SIZE = 64
# what reading a malformed checkpoint's values can raise, past the checks that name the problem
MALFORMED = (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError,
             ZeroDivisionError, MemoryError)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's draws inside come from `seed` (a tiny model's random weights); the global random
    state is restored afterwards, so building a model changes no one else's draws."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def take_options(name: str, options: dict[str, Any], allowed: dict[str, Any],
                 rules: dict[str, Rule] | None = None) -> dict[str, Any]:
    """Adapter options merged over their defaults; unknown names and out-of-range values (by the
    family's config `rules` and the shared ones) are an error."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise AdapterError(f"adapter {name!r} has no option {unknown[0]!r} (its options: {known})")
    for key, value in options.items():  # the same rules as the checkpoint's own values
        wrong = None if value is None else field_problem(key, value, rules)
        if wrong:
            raise AdapterError(f"adapter option {key}={short(value)} should be {wrong}")
    return {**allowed, **options}


def make_config(config_class: type, data: dict[str, Any]) -> Any:
    """A config dataclass from JSON metadata: unknown fields are an error, lists become tuples again."""
    unknown = sorted(str(k)[:40] for k in set(data) - {f.name for f in fields(config_class)})
    if unknown:
        raise CheckpointError(f"unknown {config_class.__name__} fields {unknown[:3]}: "
                              "the checkpoint is from a newer protobench or another family")
    cfg = config_class(**data)
    for f in fields(cfg):
        if isinstance(f.default, tuple) and isinstance(getattr(cfg, f.name), list):
            setattr(cfg, f.name, tuple(getattr(cfg, f.name)))
    return cfg


class FamilyAdapter(PrototypeAdapter):
    """Base of the built-in adapters: one `load` for protobench files and original checkpoints.

    Subclasses declare their `facts` and key signature (`claims_keys`, see PrototypeAdapter),
    set `config_class` and `model_class` (built as `model_class(cfg)`, or by overriding
    `build`) and the rules of their own config fields (`config_rules`), implement `from_original(ckpt, **options)` and `tiny(seed)`, and list their
    `options` (name -> default; None means "from the checkpoint").
    """

    config_class: ClassVar[type]
    model_class: ClassVar[type]
    concurrent: ClassVar[bool] = True  # every built-in family's evidence keeps no state between calls
    options: ClassVar[dict[str, Any]] = {"img_size": None}
    # the rules of the family's own config fields (protobench.models.config: flag, choice, count, ...);
    # fields many families share (sizes, backbone, mean, std, ...) have theirs there
    config_rules: ClassVar[dict[str, Rule]] = {}

    @classmethod
    def load(cls, path: str, **options: Any) -> PrototypeAdapter:
        return cls.from_checkpoint(read_family_checkpoint(path, cls), **options)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, **options: Any) -> PrototypeAdapter:
        check_family(ckpt, cls)
        try:
            if ckpt.is_protobench:
                return cls.from_protobench(ckpt, **options)
            return cls.from_original(ckpt, **options)
        except OptionError:  # a ValueError too, but already one line that names the option
            raise
        except MALFORMED as err:  # a value no check above foresaw: still the file's fault, still one line
            text = " ".join(str(err).split())[:160] or type(err).__name__
            raise CheckpointError(f"{ckpt.path} is not a valid {cls.display_name()} "
                                  f"checkpoint ({text})") from None

    @classmethod
    def from_protobench(cls, ckpt: Checkpoint, **options: Any) -> PrototypeAdapter:
        overrides = {k: v for k, v in take_options(cls.name, options, cls.options, cls.config_rules).items() if v is not None}
        adapter = cls.from_weights(make_config(cls.config_class, {**ckpt.config, **overrides}), ckpt.tensors, ckpt.path)
        if ckpt.classes is not None:
            if len(ckpt.classes) != adapter.info.num_classes:
                raise CheckpointError(f"{ckpt.path} records {len(ckpt.classes)} class names for a model of "
                                      f"{adapter.info.num_classes} classes; the file is damaged")
            adapter.info = replace(adapter.info, classes=ckpt.classes)
        return adapter

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> PrototypeAdapter:
        raise NotImplementedError

    @classmethod
    def from_weights(cls, cfg: Any, tensors: dict[str, torch.Tensor], path: str,
                     original: bool = False) -> PrototypeAdapter:
        """Build the model for `cfg` and load `tensors` into it (all must fit).

        The config is checked first, then the model is built on the meta device (no memory)
        and must match the tensors and run on its input size; only then is it built for real.
        """
        wrong = config_problem(cfg, cls.config_rules)
        if wrong:
            where = "read from the pickle" if original else "in its metadata"
            raise CheckpointError(f"{path}: the architecture {where} is invalid: {wrong}")
        what = (f"the {cls.display_name()} architecture protobench read from it "
                f"({getattr(cfg, 'backbone', '?')} backbone)") if original else "the architecture in its metadata"
        checked = cls.probe(cfg, tensors, path, what)
        model = cls.build(cfg, tensors)
        model.load_state_dict(tensors)
        adapter = cls(model)
        if not checked:
            cls.check_forward(adapter, path)
        return adapter

    @classmethod
    def probe(cls, cfg: Any, tensors: dict[str, torch.Tensor], path: str, what: str) -> bool:
        """Build `cfg` on the meta device: its state must fit `tensors`. Above REAL_PROBE_SIZE px its forward
        is checked there too (`check_forward`; True); a smaller input is checked on the real model once
        built (False): a forward pass that small costs less than the meta device's first use, which
        imports much of torch's compiler (about 2 s)."""
        with torch.device("meta"):
            model = cls.build(cfg, tensors)
        check_state(model.state_dict(), tensors, path, what)
        adapter = cls(model.to("meta"))
        if adapter.info.input_size <= REAL_PROBE_SIZE:
            return False
        cls.check_forward(adapter, path)
        return True

    @classmethod
    def check_forward(cls, adapter: PrototypeAdapter, path: str) -> None:
        """The model's own forward, in eval mode, on one blank input of its size (on the model's device:
        the meta device for a model built there) must give (1, P, h, w) maps and (1, C) logits."""
        info, size = adapter.info, adapter.info.input_size
        device = next(adapter.model.parameters(), torch.empty(0)).device
        try:
            with torch.no_grad():  # the model's own forward: the architecture is what is checked
                maps, logits = adapter.model(torch.zeros(1, 3, size, size, device=device))
        except RuntimeError as err:
            reason = " ".join(str(err).split())[:120]
            raise CheckpointError(f"{path}: the model cannot run on its own {size} px input ({reason}); "
                                  "its img_size or architecture is wrong") from None
        shapes = (tuple(maps.shape[:2]), maps.dim(), tuple(logits.shape), tuple(adapter.prototype_class_identity.shape))
        if shapes != ((1, info.num_prototypes), 4, (1, info.num_classes), (info.num_prototypes, info.num_classes)) \
                or min(maps.shape[2:]) < 1:
            raise CheckpointError(f"{path}: its architecture gives maps of shape {tuple(maps.shape)} and logits of "
                                  f"shape {tuple(logits.shape)}, not {info.num_prototypes} maps and "
                                  f"{info.num_classes} classes: the checkpoint is inconsistent")

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
        names = {"classes": json.dumps(list(self.info.classes))} if self.info.classes else {}
        write_protobench(path, self.name, self.config(), self.model.state_dict(), {**names, **(extra or {})})
