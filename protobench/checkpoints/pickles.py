"""Read the original research code's torch pickles without running anything from them.

A whole-model pickle names the classes it was made from (`model.Net`, `blocks.BasicBlock`,
`torch.nn.modules.conv.Conv2d`, ...). protobench never imports those: each allowed name is
served by an inert *stand-in*, a plain object that only receives the pickled attributes,
from which the adapters rebuild their own modules. The allowed names are the `torch.nn`
modules, a few generic values (`GENERIC_CLASSES`) and the classes the caller passes: the
registered model families' (`protobench.models.families.pickled_classes`). Every other name a
pickle uses must be one of the few torch writes for tensors and module state (`TORCH_NAMES`);
anything else (`os.system`, `builtins.eval`, `builtins.bytearray`, ...) is refused when the
pickle names it, before it could be called.

The pickle runs on Python's own pure-Python unpickler with the instructions that build or
fill objects checked (`RestrictedUnpickler`): calls only reach the allowlist, attributes
only land on stand-ins, and the objects a pickle builds by copying shared ones are
budgeted, so a small file cannot build a huge object graph. `protobench.checkpoints.torchfile` reads
the zip and pre-1.6 layouts around it, with every declared size checked against the file.
"""

from __future__ import annotations

import collections
import pickle
from typing import Any, ClassVar, Collection

import torch

from protobench.errors import CheckpointError
from protobench.checkpoints.limits import limit, short
from protobench.checkpoints.torchfile import BigEndian, NotTorchFile, Oversized, Refused, read_torch_file
from protobench.checkpoints.torchnames import CALLABLE_IDS, TORCH_NAMES

GENERIC_CLASSES = frozenset({
    # torch <= 1.3 pickled every module's `_backend` as a call to this function
    "torch.nn.backends.thnn._get_thnn_function_backend",
    # values checkpoints often carry beside the weights; kept as inert placeholders
    "argparse.Namespace", "numpy.dtype", "numpy.ndarray", "numpy.core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray.scalar", "numpy._core.multiarray._reconstruct",
})


class StandIn:
    """An inert placeholder for a pickled object: it keeps the state it is given, nothing else.

    Attribute access falls through to the pickled `_parameters`, `_buffers` and `_modules`,
    as on an nn.Module, so `root.features.layer1` reads naturally.
    """

    dotted: ClassVar[str] = ""  # the original class's module.qualname

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # a pickle that "calls" the class runs nothing
        self.__dict__["_call_args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))) \
                and isinstance(state[1], (dict, type(None))):
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
        raise AttributeError(f"{type(self).dotted} object in the checkpoint has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<stand-in for {type(self).dotted}>"


_STANDINS: dict[str, type[StandIn]] = {}


def standin_class(dotted: str) -> type[StandIn]:
    """The stand-in class for one original dotted class name (one class per name, cached)."""
    if dotted not in _STANDINS:
        _STANDINS[dotted] = type(dotted.rpartition(".")[2], (StandIn,), {"dotted": dotted})
    return _STANDINS[dotted]


def class_name(obj: Any) -> str:
    """The original dotted class name of a loaded object (stand-in or not); a pickle cannot forge it."""
    if isinstance(obj, StandIn):
        return type(obj).dotted
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_torch_module(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    if not module.startswith(("torch.nn.modules.", "torch.nn.parallel.")):
        return False
    cls = getattr(torch.nn, name, None)
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def allowed_standin(dotted: str, classes: Collection[str] = ()) -> bool:
    """Whether a pickle may name `dotted` (served by a stand-in): a torch.nn module, a generic value,
    or one of `classes` (the model families' own)."""
    return dotted in GENERIC_CLASSES or dotted in classes or _is_torch_module(dotted)


class RefusedGlobal(Refused):
    def __init__(self, dotted: str):
        super().__init__(dotted)
        self.dotted = dotted


def _resolve(module: str, name: str, classes: Collection[str]) -> Any:
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    if (module, name) in NAME_MAPPING:  # Python 2 names in protocol-2 pickles, as torch maps them
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    dotted = f"{module}.{name}"
    if dotted in TORCH_NAMES:
        return TORCH_NAMES[dotted]
    if allowed_standin(dotted, classes):
        return standin_class(dotted)
    raise RefusedGlobal(dotted)


# ---------------------------------------------------------------- the unpickler


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _cost(value: Any) -> int:
    """Rough bytes a call or BUILD spends copying `value` (memo references make copies cheap to ask for)."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return 64 + 64 * len(value)
    return 64


class RestrictedUnpickler(pickle._Unpickler):
    """pickle's pure-Python unpickler with the instructions that call, build or fill checked."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, persistent_load: Any = None, budget: list[int] | None = None,
                 classes: Collection[str] = ()):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent_load
        self._budget = budget if budget is not None else [limit("MAX_UNPICKLE_MB") << 20]
        self._classes = classes

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name, self._classes)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("a persistent id outside the tensor data")
        return self._persistent(pid)

    def _charge(self, *values: Any) -> None:
        self._budget[0] -= 256 + sum(map(_cost, values))
        if self._budget[0] < 0:
            raise Oversized(f"builds more than {limit('MAX_UNPICKLE_MB')} MB of objects "
                            "(raise PROTOBENCH_MAX_UNPICKLE_MB if it is genuine)")

    def load_reduce(self) -> None:
        args, func = self.stack.pop(), self.stack[-1]
        standin = isinstance(func, type) and issubclass(func, StandIn)
        if not (standin or id(func) in CALLABLE_IDS) or not isinstance(args, tuple):
            raise Refused(f"calls {short(func)}, which no supported model needs")
        self._charge(*args)
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args, cls = self.stack.pop(), self.stack.pop()
        if not (isinstance(cls, type) and issubclass(cls, StandIn) and isinstance(args, tuple)):
            raise Refused("creates an object of a type no supported model uses")
        self._charge(*args)
        self.append(cls.__new__(cls))

    def load_build(self) -> None:
        state, inst = self.stack.pop(), self.stack[-1]
        self._charge(*(state if isinstance(state, tuple) else (state,)))
        if isinstance(inst, StandIn):
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict and isinstance(state, dict) and all(map(_is_str, state)):
            inst.__dict__.update(state)  # a state dict's `_metadata` attribute
        else:
            raise Refused(f"sets the state of a {type(inst).__name__}, which torch.save never does")

    def _fill(self, kind: type, op: str) -> None:
        if type(self.stack[-1]) is not kind and not (kind is dict and isinstance(self.stack[-1], dict)):
            raise Refused(f"uses {op} on a {type(self.stack[-1]).__name__}")

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._fill(list, "APPENDS")
        self.stack[-1].extend(items)

    def load_append(self) -> None:
        value = self.stack.pop()
        self._fill(list, "APPEND")
        self.stack[-1].append(value)

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._fill(dict, "SETITEMS")
        for i in range(0, len(items) - 1, 2):
            self.stack[-1][items[i]] = items[i + 1]

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._fill(dict, "SETITEM")
        self.stack[-1][key] = value

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._fill(set, "ADDITEMS")
        self.stack[-1].update(items)

    def refuse(self) -> None:
        raise Refused("uses pickle instructions torch.save never writes")

    for _op, _method in ((pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj), (pickle.BUILD, load_build),
                         (pickle.APPENDS, load_appends), (pickle.APPEND, load_append), (pickle.SETITEM, load_setitem),
                         (pickle.SETITEMS, load_setitems), (pickle.ADDITEMS, load_additems)):
        dispatch[_op[0]] = _method
    for _op in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.NEWOBJ_EX, pickle.PERSID,
                pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_op[0]] = refuse
    del _op, _method


def refusal(path: str, names: list[str]) -> CheckpointError:
    shown = ", ".join(sorted(names)[:4]) + (" ..." if len(names) > 4 else "")
    hint = ""
    if "torch.storage._load_from_bytes" in names:
        hint = " (a plain pickle.dump file, as some repositories write beside torch.save's; use the torch.save " \
               "file, e.g. model.pth)"
    return CheckpointError(f"refusing to load {path}: it references {shown}, which no supported model uses{hint}; "
                           "protobench never runs code from a checkpoint")


def load_pickle(path: str, kind: str, f: Any, classes: Collection[str] = ()) -> Any:
    """Unpickle an open torch checkpoint ('zip' or 'legacy', as checkpoint.sniff says) safely;
    `classes`: the model classes it may name besides torch.nn's (see `allowed_standin`)."""
    budget = [limit("MAX_UNPICKLE_MB") << 20]  # one budget for all the pickles in the file

    def unpickle(stream: Any, persistent_load: Any = None) -> Any:
        return RestrictedUnpickler(stream, persistent_load, budget, classes).load()

    try:
        return read_torch_file(f, kind, unpickle)
    except RefusedGlobal as err:
        raise refusal(path, [err.dotted]) from None
    except Refused as err:
        raise CheckpointError(f"refusing to load {path}: it {err}; protobench never runs code from a checkpoint") \
            from None
    except Oversized as err:
        raise CheckpointError(f"refusing to load {path}: it {err}; the file is truncated or damaged, "
                              "or made to exhaust memory") from None
    except NotTorchFile as err:
        raise CheckpointError(f"{path} is {err}: protobench reads torch.save checkpoints") from None
    except BigEndian:
        raise CheckpointError(f"{path} was written on a big-endian machine, which protobench does not read: "
                              "save it again on a little-endian one (x86, ARM)") from None
    except MemoryError:
        raise CheckpointError(f"{path} does not fit in memory while unpickling") from None
    except Exception as err:  # anything else the file's bytes provoke: they are not a valid checkpoint
        raise CheckpointError(damaged(path, err)) from None


def damaged(path: str, err: BaseException) -> str:
    return f"{path} is truncated or damaged ({_first_sentence(err)}): copy or download it again"


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(". ")[0][:200]

