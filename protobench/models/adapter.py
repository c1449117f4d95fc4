"""The adapter protocol and the registry of model families.

An adapter wraps one loaded prototype model and exposes what the benchmark needs:
similarity maps (differentiable w.r.t. the input), logits, the prototype-to-class
identity and the input spec. The core never looks past this interface.

The registry is a name -> "module:Class" table, so listing adapters imports no torch.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from protobench.errors import AdapterError

if TYPE_CHECKING:  # torch is imported lazily: `protobench --help` must stay fast
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (import path, one-line description); plugins add to it at import time
BUILTIN_ADAPTERS: dict[str, tuple[str, str]] = {
    "auto": ("protobench.models.family:AutoAdapter", "tell the family from the checkpoint (the default)"),
    "protopnet": ("protobench.adapters.protopnet:ProtoPNetAdapter", "ProtoPNet (Chen et al., NeurIPS 2019)"),
    "tesnet": ("protobench.adapters.tesnet:TesNetAdapter", "TesNet (Wang et al., ICCV 2021)"),
    "protopool": ("protobench.adapters.protopool:ProtoPoolAdapter", "ProtoPool (Rymarczyk et al., ECCV 2022)"),
    "pipnet": ("protobench.adapters.pipnet:PIPNetAdapter", "PIP-Net (Nauta et al., CVPR 2023)"),
    "prototree": ("protobench.adapters.prototree:ProtoTreeAdapter", "ProtoTree (Nauta et al., CVPR 2021)"),
}
ENTRY_POINT_GROUP = "protobench.adapters"
_REGISTERED: dict[str, type] = {}


@dataclass(frozen=True)
class ModelInfo:
    """What the benchmark needs to know about a model's inputs and outputs."""

    input_size: int  # square side S the model takes, in pixels
    mean: tuple[float, float, float]  # per-channel normalization mean (RGB, 0..1 scale)
    std: tuple[float, float, float]  # per-channel normalization std
    num_classes: int  # C, width of the logits
    num_prototypes: int  # P, number of similarity maps
    similarity: str  # how maps are computed, for the record (e.g. "log", "linear")


class PrototypeAdapter:
    """Base class of every adapter: a model plus the facts the benchmark needs.

    Subclasses implement `load` and `forward`; `name` is the registry name.
    """

    name: ClassVar[str] = ""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, prototype_class_identity: torch.Tensor):
        self.model = model.eval()
        self.info = info
        self.prototype_class_identity = prototype_class_identity.float()  # (P, C), 1 where p belongs to c

    @classmethod
    def load(cls, path: str, **options: Any) -> PrototypeAdapter:
        """Build the adapter from a checkpoint file; raise CheckpointError if it cannot."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized images (B, 3, S, S) -> (similarity maps (B, P, h, w), logits (B, C))."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(x)

    def to(self, device: Any) -> PrototypeAdapter:
        self.model.to(device)
        self.prototype_class_identity = self.prototype_class_identity.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.prototype_class_identity.device

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The family's own training loss on normalized images and labels: its scalar terms and the
        total 'loss'; optionally the same forward pass's 'maps' (B, P, h, w) and 'logits' (B, C),
        which `protobench finetune` reuses (first pass of the alignment loss, training accuracy)."""
        raise AdapterError(f"adapter {self.name!r} has no training loss: it cannot be trained or fine-tuned "
                           "(protobench finetune supports the ProtoPNet family)")

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The trainable parameters by part, 'features', 'add_on', 'prototypes' and 'last_layer'
        (each part gets its own learning rate when fine-tuning)."""
        raise AdapterError(f"adapter {self.name!r} does not say which parameters are its backbone, prototypes "
                           "and last layer: it cannot be fine-tuned (protobench finetune supports the ProtoPNet family)")

    def push(self, loader: Any) -> list:
        """Project prototypes onto training patches of their class; loader yields (x, y, index)."""
        raise AdapterError(f"adapter {self.name!r} cannot push prototypes onto training patches")

    def save(self, path: str, extra: dict[str, str] | None = None) -> None:
        """Write the model in protobench's safetensors format (adapters that can rebuild from it)."""
        raise NotImplementedError(f"adapter {self.name!r} cannot write protobench checkpoints")


def register_adapter(name: str):
    """Class decorator: make an adapter available under `name`."""

    def wrap(cls: type) -> type:
        cls.name = name
        _REGISTERED[name] = cls
        return cls

    return wrap


def _import(target: str) -> type:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise AdapterError(f"cannot import adapter module {module_name!r} ({err}); is it installed?") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AdapterError(f"module {module_name!r} has no adapter class {attr!r}") from None


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_adapters() -> dict[str, str]:
    """Name -> description of every adapter that can be asked for by name."""
    names = {name: desc for name, (_, desc) in BUILTIN_ADAPTERS.items()}
    names.update({name: f"plugin ({ep.value})" for name, ep in _entry_points().items()})
    names.update({name: "registered at run time" for name in _REGISTERED if name not in names})
    return names


def family_adapter(name: str) -> type[PrototypeAdapter]:
    """The adapter of a family a checkpoint names: a registered name only (built-in, installed
    plugin, or registered in this process), never an import path and never 'auto'."""
    if ":" in name or name == "auto" or name not in available_adapters():
        raise AdapterError(f"no model family {name[:40]!r} is registered")
    return get_adapter(name)


def get_adapter(name: str) -> type[PrototypeAdapter]:
    """Resolve an adapter by registry name, entry point, or 'package.module:Class'.

    Only for names the user gives (--adapter): an import path imports code. Names read from
    a checkpoint go through `family_adapter`.
    """
    if ":" in name:
        cls = _import(name)
    elif name in _REGISTERED:
        return _REGISTERED[name]
    elif name in BUILTIN_ADAPTERS:
        cls = _import(BUILTIN_ADAPTERS[name][0])
    elif name in (eps := _entry_points()):
        try:
            cls = eps[name].load()
        except Exception as err:  # a plugin's import can fail in any way; say which plugin it was
            raise AdapterError(f"cannot load plugin adapter {name!r} ({eps[name].value}): {err}") from err
    else:
        known = sorted(available_adapters())
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise AdapterError(f"unknown adapter {name!r}.{hint} Known adapters: {', '.join(known)}")
    if not (isinstance(cls, type) and issubclass(cls, PrototypeAdapter)):
        raise AdapterError(f"{name!r} is not a protobench.models.adapter.PrototypeAdapter subclass")
    return cls
