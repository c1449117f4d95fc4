"""Read the original research code's torch pickles without running anything from them.

A whole-model pickle names the classes it was made from (`model.PPNet`,
`resnet_features.BasicBlock`, `torch.nn.modules.conv.Conv2d`, ...). protobench never
imports those: each allowed name is served by an inert *stand-in*, a plain object that
only receives the pickled attributes, from which the adapters rebuild their own modules.
Names outside the allowlist (`os.system`, `builtins.eval`, ...) are refused before any
object is built, so a hostile payload never runs.

- torch >= 1.6 zip files: `torch.load(weights_only=True)` with the stand-ins registered
  under the original dotted names for this one call (`torch.serialization.safe_globals`),
  after `get_unsafe_globals_in_checkpoint` listed the names without executing anything.
- pre-1.6 files: torch's weights-only unpickler does not read their module records, so
  they go through `RESTRICTED_PICKLE`, whose `find_class` returns only stand-ins and what
  torch's weights-only unpickler allows (tensor rebuild functions, storages, dtypes).
"""

from __future__ import annotations

import pickle
import types
import warnings
from typing import Any, ClassVar

import torch

from protobench.errors import CheckpointError

_BACKBONE_CLASSES = {
    "resnet_features": ("ResNet_features", "BasicBlock", "Bottleneck"),
    "vgg_features": ("VGG_features",),
    "densenet_features": ("DenseNet_features", "_DenseBlock", "_DenseLayer", "_Transition"),
}
# module prefixes under which the families keep their copies of ProtoPNet's backbones
_BACKBONE_PREFIXES = ("", "models.", "features.", "protopool.")
# top-level model classes -> family (adapter name)
ROOT_CLASSES = {
    "model.PPNet": "protopnet",
    "model.TESNet": "tesnet",
    "model.PrototypeChooser": "protopool",
    "protopool.model.PrototypeChooser": "protopool",
    "prototree.prototree.ProtoTree": "prototree",
    "pipnet.pipnet.PIPNet": "pipnet",
}
_OTHER_CLASSES = {
    "prototree.branch.Branch", "prototree.leaf.Leaf", "prototree.node.Node", "util.l2conv.L2Conv2D",
    "pipnet.pipnet.NonNegLinear",
    # torch <= 1.3 pickled every module's `_backend` as a call to this function
    "torch.nn.backends.thnn._get_thnn_function_backend",
    # values checkpoints often carry beside the weights; kept as inert placeholders
    "argparse.Namespace", "numpy.dtype", "numpy.ndarray", "numpy.core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray.scalar", "numpy._core.multiarray._reconstruct",
}
KNOWN_CLASSES = frozenset(
    {f"{prefix}{module}.{name}" for prefix in _BACKBONE_PREFIXES
     for module, names in _BACKBONE_CLASSES.items() for name in names}
    | set(ROOT_CLASSES) | _OTHER_CLASSES
)


class StandIn:
    """An inert placeholder for a pickled object: it keeps the state it is given, nothing else.

    Attribute access falls through to the pickled `_parameters`, `_buffers` and `_modules`,
    as on an nn.Module, so `root.features.layer1` reads naturally.
    """

    dotted: ClassVar[str] = ""  # the original class's module.qualname
    dump_patches: ClassVar[bool] = False  # read by torch's pre-1.6 loader; never write patch files

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # a pickle that "calls" the class runs nothing
        self.__dict__["_call_args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) as pickle's BUILD has it
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __getattr__(self, name: str) -> Any:
        for table in ("_parameters", "_buffers", "_modules"):
            found = self.__dict__.get(table)
            if isinstance(found, dict) and name in found:
                return found[name]
        raise AttributeError(f"{self.dotted} object in the checkpoint has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<stand-in for {self.dotted}>"


_STANDINS: dict[str, type[StandIn]] = {}


def standin_class(dotted: str) -> type[StandIn]:
    """The stand-in class for one original dotted class name (one class per name, cached)."""
    if dotted not in _STANDINS:
        _STANDINS[dotted] = type(dotted.rpartition(".")[2], (StandIn,), {"dotted": dotted})
    return _STANDINS[dotted]


def class_name(obj: Any) -> str:
    """The original dotted class name of a loaded object (stand-in or not)."""
    if isinstance(obj, StandIn):
        return obj.dotted
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_torch_module(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    if not module.startswith(("torch.nn.modules.", "torch.nn.parallel.")):
        return False
    cls = getattr(torch.nn, name, None)
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def allowed_standin(dotted: str) -> bool:
    return dotted in KNOWN_CLASSES or _is_torch_module(dotted)


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, dotted: str):
        super().__init__(dotted)
        self.dotted = dotted


def refusal(path: str, names: list[str]) -> CheckpointError:
    shown = ", ".join(sorted(names)[:4]) + (" ..." if len(names) > 4 else "")
    hint = ""
    if "torch.storage._load_from_bytes" in names:
        hint = " (a plain pickle.dump file such as ProtoTree's tree.pkl; use the torch.save file, e.g. model.pth)"
    return CheckpointError(f"refusing to load {path}: it references {shown}, which no supported model uses{hint}; "
                           "protobench never runs code from a checkpoint")


def _weights_only_globals() -> dict[str, Any]:
    from torch import _weights_only_unpickler

    return _weights_only_unpickler._get_allowed_globals()


def _resolve(module: str, name: str) -> Any:
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    if (module, name) in NAME_MAPPING:  # Python 2 names in protocol-2 pickles, as torch maps them
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    dotted = f"{module}.{name}"
    if dotted in (allowed := _weights_only_globals()):
        return allowed[dotted]
    if allowed_standin(dotted):
        return standin_class(dotted)
    raise RefusedGlobal(dotted)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name)


def _restricted_load(file, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# a stand-in for the `pickle` module, passed to torch.load for pre-1.6 files
RESTRICTED_PICKLE = types.SimpleNamespace(__name__="protobench_restricted_pickle",
                                          Unpickler=_RestrictedUnpickler, load=_restricted_load)


def _load_zip(path: str) -> Any:
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    try:
        names = get_unsafe_globals_in_checkpoint(path)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refusing to load {path}: its pickle uses instructions a weights-only "
                              f"loader does not read ({err}); protobench never runs code from a checkpoint") from None
    refused = [n for n in names if not allowed_standin(n)]
    if refused:
        raise refusal(path, refused)
    with safe_globals([(standin_class(n), n) for n in names]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _load_legacy(path: str) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE)


def load_pickle(path: str, kind: str) -> Any:
    """Unpickle a torch checkpoint ('zip' or 'legacy', as checkpoint.sniff says) safely."""
    loader = _load_zip if kind == "zip" else _load_legacy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's source-changed and protocol notes say nothing useful here
            return loader(path)
    except CheckpointError:
        raise
    except RefusedGlobal as err:
        raise refusal(path, [err.dotted]) from None
    except pickle.UnpicklingError as err:
        if kind == "zip":  # torch's weights-only unpickler met something it does not build
            raise CheckpointError(f"refusing to load {path}: {_first_sentence(err)}") from None
        raise CheckpointError(damaged(path, err)) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(damaged(path, err)) from None


def damaged(path: str, err: BaseException) -> str:
    return f"{path} is truncated or damaged ({_first_sentence(err)}): copy or download it again"


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(". ")[0][:200]


def module_state(obj: Any, path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict of a pickled module tree (stand-ins), as nn.Module.state_dict() gives it."""
    state: dict[str, torch.Tensor] = {}

    def walk(node: Any, prefix: str, depth: int) -> None:
        if depth > 200:
            raise CheckpointError(f"{path}: the pickled module tree is nested implausibly deep")
        attrs = node.__dict__
        skip = attrs.get("_non_persistent_buffers_set") or set()
        for table in ("_parameters", "_buffers"):
            for name, value in (attrs.get(table) or {}).items():
                if value is None or name in skip:
                    continue
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"{path}: {prefix}{name} is a {type(value).__name__}, not a tensor")
                state[prefix + name] = value.detach()
        for name, child in (attrs.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.", depth + 1)

    walk(obj, "", 0)
    return state
