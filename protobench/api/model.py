"""Model handles: `protobench.load` (any file the CLI reads) and `protobench.wrap` (a module in memory).

A handle holds an adapter (protobench.models.adapter). `wrap` accepts, in this order of trial:
- protobench's own model of a family (the adapter then shares the module: no copy);
- a model object of a supported family as its original code builds it: it is pickled and read back
  through the same safe loader as the file `torch.save(module)` would give the CLI, so both give the
  same numbers; this happens again at each evaluation, so the numbers follow the module's training;
- any module following the protocol (protobench.api.protocol).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from protobench.api.calls import public
from protobench.errors import AdapterError

if TYPE_CHECKING:
    import torch

    from protobench.models.adapter import ModelInfo, PrototypeAdapter


class Model:
    """A prototype model protobench can evaluate. Build it with `protobench.load` or `protobench.wrap`.

    Attributes:
        name: the name results record (a checkpoint's file stem, or the module's class name).
        family: the model family's registry name ('' for a module following the protocol).
        ckpt: the checkpoint file it was loaded from, or None.
    """

    def __init__(self, adapter: PrototypeAdapter, name: str, *, ckpt: str | None = None, spec: str = "auto",
                 options: dict[str, Any] | None = None, module: Any = None,
                 refresh: Callable[[], PrototypeAdapter] | None = None):
        self._adapter, self._refresh = adapter, refresh
        self.name, self.ckpt, self.spec, self.options = name, ckpt, spec, dict(options or {})
        self.module = module if module is not None else adapter.model  # the user's module, restored after runs

    @property
    def adapter(self) -> PrototypeAdapter:
        """The adapter, rebuilt from the wrapped module first when it is a copy of it."""
        if self._refresh is not None:
            self._adapter = self._refresh()
        return self._adapter

    def release(self) -> None:
        """After a run: a copy read from the wrapped module goes back to the CPU (no GPU memory held between
        evaluations); a shared model's adapter follows the model to the device it was put back on."""
        import torch

        model = self._adapter.model
        home = torch.device("cpu") if self._refresh is not None else next(model.parameters(), torch.empty(0)).device
        if self._adapter.device != home:
            self._adapter = self._adapter.to(home)

    @property
    def family(self) -> str:
        return self._adapter.name

    @property
    def info(self) -> ModelInfo:
        """Input size, normalization, classes and prototypes (images must be given in this format)."""
        return self._adapter.info

    @property
    def device(self) -> torch.device:
        return self._adapter.device

    @property
    def identity(self) -> str:
        """What meta.json records as the checkpoint: its path, or what the module is."""
        if self.ckpt is not None:
            return self.ckpt
        cls = type(self.module)
        return f"memory:{cls.__module__}.{cls.__qualname__}"

    @property
    def is_demo(self) -> bool:
        from protobench.demo import is_demo_checkpoint

        return self.ckpt is not None and is_demo_checkpoint(self.ckpt)

    def __repr__(self) -> str:
        info = self.info
        return (f"Model({self.name!r}, family={self.family or 'protocol'!r}, {info.num_prototypes} prototypes, "
                f"{info.num_classes} classes, {info.input_size} px, device={self.device})")


@public
def load(ckpt: str | Path | None = None, adapter: str = "auto", device: str | None = None, download: bool = False,
         **adapter_options: Any) -> Model:
    """A model from any file `protobench evaluate --ckpt` reads.

    Args:
        ckpt: the checkpoint (an original repository's file or protobench's safetensors); None: the demo model.
        adapter: the family's name, 'package.module:Class', or 'auto' (told from the file).
            An hf://owner/repo/file address is read from the Hugging Face cache (docs/zoo.md).
        device: 'cpu', 'cuda[:N]' or None ('auto': a GPU when there is one).
        download: fetch an hf:// file missing from the cache (`--download`).
        **adapter_options: the adapter's options (`--adapter-option key=value`).
    """
    from protobench.demo import demo_checkpoint
    from protobench.run.devices import check_device_name, resolve_device
    from protobench.run.evaluate import load_adapter

    from protobench.run.sources import main_file, resolve

    path = str(ckpt) if ckpt is not None else demo_checkpoint()
    path = resolve(path, download)[0]
    path = main_file(path) if Path(path).is_dir() else path
    check_device_name(device or "auto")
    loaded = load_adapter(adapter, path, adapter_options, resolve_device(device or "auto"))
    return Model(loaded, Path(path).stem, ckpt=path, spec=adapter,
                 options=adapter_options)


@public
def wrap(module: Any, family: str = "auto", **options: Any) -> Model:
    """A model handle around a torch module already in memory.

    Args:
        module: protobench's own model of a family, a model object of a supported family as its original
            code builds it (e.g. ProtoPNet's `model.PPNet`), or a module following the protocol
            (docs/python.md, Your own architecture). A Model or an adapter is returned as it is.
        family: the family's name, or 'auto' (told from the module's class).
        **options: for a module following the protocol: input_size, mean, std, prototype_class_identity
            (when the module has no such attribute), name; for an original family's model: its adapter's options.
    """
    import torch

    from protobench.models.adapter import PrototypeAdapter

    if isinstance(module, Model):
        return module
    if isinstance(module, PrototypeAdapter):
        return Model(module, options.get("name") or module.name or type(module).__name__, spec=module.name)
    if not isinstance(module, torch.nn.Module):
        raise AdapterError(f"protobench.wrap takes a torch.nn.Module, got a {type(module).__name__}: "
                           "use protobench.load for a checkpoint file")
    from protobench.api.protocol import keeping_modes, protocol_adapter

    own = _own_family(module, family)
    if own is not None:
        return Model(keeping_modes(module, lambda: own(module)), options.get("name") or type(module).__name__,
                     spec=own.name, module=module)
    original = _original_family(module, family)
    if original is not None:
        return _wrap_original(module, original, options)
    return Model(protocol_adapter(module, **options), options.get("name") or type(module).__name__,
                 spec="protocol", module=module)


def as_model(model: Any) -> Model:
    """A Model from whatever evaluate was given: a Model, an adapter, a module or a checkpoint path."""
    if isinstance(model, (str, Path)):
        return load(model)
    return wrap(model)


def _families(family: str) -> list[tuple[str, type]]:
    from protobench.models.families import usable_families
    from protobench.models.lookup import get_adapter

    if family == "auto":
        return usable_families()
    cls = get_adapter(family)
    return [(cls.name or family, cls)]


def _own_family(module: Any, family: str) -> type | None:
    """The family whose own model class `module` is an instance of (protobench's reimplementation)."""
    for _, cls in _families(family):
        model_class = getattr(cls, "model_class", None)
        if isinstance(model_class, type) and type(module) is model_class:
            return cls
    return None


def _original_family(module: Any, family: str) -> str | None:
    """The family that reads pickles of `module`'s class (its import path, as `torch.save` records it)."""
    from protobench.checkpoints.pickles import class_name

    dotted = class_name(module)
    found = [name for name, cls in _families(family) if cls.facts is not None and dotted in cls.facts.root_classes]
    return family if found else None


def _wrap_original(module: Any, spec: str, options: dict[str, Any]) -> Model:
    def refresh() -> PrototypeAdapter:
        return snapshot(module, spec, options)

    adapter = refresh()
    name = options.pop("name", None) or type(module).__name__
    return Model(adapter, name, spec=spec, options=options, module=module, refresh=refresh)


def snapshot(module: Any, spec: str, options: dict[str, Any]) -> PrototypeAdapter:
    """The adapter protobench reads from `torch.save(module)`, on the module's device: the file the
    CLI would be given, written to a temporary directory and read with the same safe loader."""
    import torch

    from protobench.run.evaluate import load_adapter

    device = next(module.parameters(), torch.empty(0)).device
    with tempfile.TemporaryDirectory(prefix="protobench-wrap-") as tmp:
        path = Path(tmp) / f"{type(module).__name__}.pth"
        try:
            torch.save(module, path)
        except Exception as err:  # noqa: BLE001 - pickling a module can fail in any way (a lambda, a lock)
            raise AdapterError(f"cannot read the {type(module).__name__} as its original code saves it "
                               f"(torch.save failed: {' '.join(str(err).split())[:120]}); save its state dict "
                               "and use protobench.load, or follow the protocol (docs/python.md)") from None
        return load_adapter(spec, str(path), dict(options), device)
