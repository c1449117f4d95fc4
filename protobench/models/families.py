"""The registry of model families (FAMILIES), and telling a checkpoint's family from it.

Each module `adapters/<name>.py` (installed as `protobench.adapters.<name>`) is the built-in
family `<name>`. It is listed without being imported, so `protobench --help` and listing
names import no torch, and registers its adapter class when it is first asked for:

    @FAMILIES.register("mynet")
    class MyNetAdapter(FamilyAdapter):
        facts = FamilyFacts(display_name="MyNet", paper=..., root_classes=("model.MyNet",), ...)

        @classmethod
        def claims_keys(cls, keys): ...       # its state dicts' key signature

Installed packages add families through the entry-point group "protobench.adapters"
(`cosine = "mylab_adapter:CosineAdapter"`); code adds its own with `FAMILIES.register` or
`FAMILIES.add`. A name is never taken twice unless `replace=True` says so. What the registered
families declare is all `--adapter auto` (`claimants`) and the safe unpickler's allow-list
(`pickled_classes`) know: a plugin family is told from its files and loaded safely like a
built-in one (docs/adapters.md, Adding a model family).
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from typing import TYPE_CHECKING, Any

from protobench.errors import AdapterError, CheckpointError, ProtobenchWarning
from protobench.models.adapter import PrototypeAdapter
from protobench.registry import Registry, RegistryError

if TYPE_CHECKING:
    from protobench.checkpoints.loading import Checkpoint

GROUP = "protobench.adapters"  # the entry-point group (the name plugins have used since before the registry)
BUILTIN_PACKAGE = "protobench.adapters"  # one module per built-in family


def is_adapter_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, PrototypeAdapter)


class FamilyRegistry(Registry):
    """A Registry whose classes learn the name they are registered under (files and results record it)."""

    def _validate(self, name: str, obj: Any) -> None:
        super()._validate(name, obj)
        obj.name = name  # also for plugins, which are imported lazily, not through add()


FAMILIES = FamilyRegistry("model family", group=GROUP, check=is_adapter_class,
                          expects="a protobench.models.adapter.PrototypeAdapter subclass",
                          reserved={"auto": "--adapter auto means 'tell the family from the file'"})


def _add_builtins() -> None:
    package = importlib.import_module(BUILTIN_PACKAGE)  # its __init__ imports nothing
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            FAMILIES.add(module.name, f"{BUILTIN_PACKAGE}.{module.name}", source="built-in")  # its import registers it


_add_builtins()


def display_name(name: str) -> str:
    """A registered family's own spelling (its facts' display_name), else the name as given."""
    usable = dict(usable_families())
    return usable[name].display_name() if name in usable else name


_BROKEN: set[str] = set()  # plugins already warned about in this process


def usable_families() -> list[tuple[str, type[PrototypeAdapter]]]:
    """(name, class) of every registered family, imported. An installed plugin that fails to
    import is left out with one warning (it can neither claim a file nor widen what the safe
    unpickler allows); any other that fails is a bug, raised."""
    found = []
    for name, source in FAMILIES.sources().items():
        try:
            found.append((name, FAMILIES.get(name)))
        except Exception as err:  # noqa: BLE001 - a plugin's import can fail in any way
            if not source.startswith("plugin"):
                raise
            if name not in _BROKEN:
                _BROKEN.add(name)
                warnings.warn(f"the {source} model family {name!r} cannot be imported and is left out "
                              f"({' '.join(str(err).split())[:160]})", ProtobenchWarning, stacklevel=2)
    return found


def pickled_classes() -> frozenset[str]:
    """Every class name a registered family says its pickles hold: what the safe unpickler may
    serve with stand-ins, besides torch.nn's modules and a few generic values."""
    names: set[str] = set()
    for family, cls in usable_families():
        facts = cls.facts
        if facts is None:
            continue
        for declared in (facts.root_classes, facts.pickled_classes):
            if not isinstance(declared, (tuple, list, set, frozenset)) or not all(isinstance(n, str) for n in declared):
                raise AdapterError(f"model family {family!r} declares its pickled classes wrongly: root_classes "
                                   "and pickled_classes must be tuples of 'module.Class' strings")
            names.update(declared)
    return frozenset(names)


def read_family_checkpoint(path: str, family: type[PrototypeAdapter] | None = None) -> Checkpoint:
    """Read any checkpoint file safely (protobench.checkpoints.loading.read_checkpoint): a pickle may
    name the registered families' classes, and those of `family` (an adapter loaded by import path)."""
    from protobench.checkpoints.loading import read_checkpoint

    classes = pickled_classes()
    if family is not None and family.facts is not None:
        classes |= {*family.facts.root_classes, *family.facts.pickled_classes}
    return read_checkpoint(path, classes)


def _refines(name: str, cls: type[PrototypeAdapter]) -> tuple[str, ...]:
    declared = cls.facts.refines if cls.facts is not None else ()
    if not isinstance(declared, (tuple, list)) or not all(isinstance(n, str) for n in declared):
        raise AdapterError(f"model family {name!r} declares refines wrongly: it must be a tuple of family names")
    return tuple(declared)


def most_specific(found: dict[str, type[PrototypeAdapter]]) -> tuple[str, ...]:
    """The claimants no other claimant refines: a family whose narrower claim (a signature of its own
    on the same pickled class or keys) picked the file out wins over the family it refines."""
    refined = {general for name, cls in found.items() for general in _refines(name, cls) if general != name}
    return tuple(name for name in found if name not in refined)


def claimants(ckpt: Checkpoint) -> tuple[str, ...]:
    """The families that could read this checkpoint: the one its metadata names, or the most
    specific of the registered families whose `claims` accepts it (pickled model class and its
    attributes, or key signature)."""
    if ckpt.is_protobench:
        return (ckpt.adapter,)
    found = most_specific({name: cls for name, cls in usable_families() if cls.claims(ckpt)})
    if ckpt.root is not None and not found:
        raise CheckpointError(f"{ckpt.path} holds a pickled {ckpt.root_class}, which no registered model family "
                              "reads; write an adapter for it (see docs/adapters.md)")
    return found


def detect_family(ckpt: Checkpoint) -> str:
    """`--adapter auto`: the one family that claims the checkpoint, else a one-line error."""
    found = claimants(ckpt)
    if len(found) == 1:
        return found[0]
    if not found:
        sample = ", ".join(sorted(ckpt.tensors)[:3]) or "none"
        raise CheckpointError(f"cannot tell which model family {ckpt.path} belongs to (first keys: {sample}); "
                              "pass --adapter NAME (see `protobench adapters`)")
    labels = [display_name(f) for f in found]
    names = " and ".join(labels if len(set(labels)) == len(labels) else found)  # a subclass may keep its parent's
    options = " or ".join(f"--adapter {f}" for f in found)
    what = "a state dict" if ckpt.root is None else f"a pickled {ckpt.root_class}"
    why = " (identical keys)" if ckpt.root is None else " (each claims that class)"
    raise CheckpointError(f"{ckpt.path} is {what} that {names} share{why}; say which with {options}")


def check_family(ckpt: Checkpoint, family: type[PrototypeAdapter]) -> None:
    """Raise a one-line error when the checkpoint belongs to another family than `family`'s."""
    name = family.name
    if ckpt.is_protobench:
        found: tuple[str, ...] = (ckpt.adapter,)
    elif family.claims(ckpt):  # registered or not (an adapter loaded by import path)
        narrower = {n: cls for n, cls in usable_families()
                    if n != name and name in _refines(n, cls) and cls.claims(ckpt)}
        if not narrower:
            return
        found = tuple(narrower)  # e.g. a variant of the family, pickled under the same class name
    else:
        found = claimants(ckpt)
    if name in found:
        return
    if not found:
        sample = ", ".join(sorted(ckpt.tensors)[:3]) or "none"
        raise CheckpointError(f"{ckpt.path} does not look like a {family.display_name()} checkpoint "
                              f"(first keys: {sample}); see `protobench adapters` for the families protobench reads")
    holder = f"a {found[0]!r} model" if ckpt.is_protobench else f"a {display_name(found[0])} checkpoint"
    raise CheckpointError(f"{ckpt.path} holds {holder}, not {name!r}: run with --adapter {found[0]}")


def family_adapter(name: str) -> type[PrototypeAdapter]:
    """The adapter of a family a checkpoint names: a registered name only (built-in, installed
    plugin, or registered in this process), never an import path and never 'auto'."""
    if ":" in name or name == "auto" or name not in FAMILIES:
        raise AdapterError(f"no model family {name[:40]!r} is registered")
    return get_adapter(name)


def get_adapter(name: str) -> type[PrototypeAdapter]:
    """The adapter class for --adapter NAME: 'auto', a registered family, or 'package.module:Class'.

    Only for names the user gives: an import path imports code. Names read from a checkpoint
    go through `family_adapter`.
    """
    if name == "auto":
        return AutoAdapter
    if ":" in name:
        return _import_class(name)
    if name not in FAMILIES:
        raise AdapterError(f"{FAMILIES.unknown(name)}; or auto, or package.module:Class")
    try:
        return FAMILIES.get(name)
    except RegistryError:
        raise
    except Exception as err:  # a plugin's import can fail in any way; say which plugin it was
        if not FAMILIES.sources()[name].startswith("plugin"):
            raise  # a built-in family that cannot be imported is a bug: let it be reported as one
        raise AdapterError(f"cannot load plugin model family {name!r} ({type(err).__name__}: {err})") from None


def _import_class(target: str) -> type[PrototypeAdapter]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise AdapterError(f"cannot import adapter module {module_name!r} ({err}); is it installed?") from err
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise AdapterError(f"module {module_name!r} has no adapter class {attr!r}") from None
    if not is_adapter_class(cls):
        raise AdapterError(f"{target!r} is not a protobench.models.adapter.PrototypeAdapter subclass")
    return cls


class AutoAdapter(PrototypeAdapter):
    """`--adapter auto`: tell the family from the checkpoint, then load it with that family's adapter."""

    @classmethod
    def load(cls, path: str, **options: Any) -> PrototypeAdapter:
        for _, family in usable_families():  # a directory of files some family saves its models as
            if family.claims_path(path):
                return family.load(path, **options)
        ckpt = read_family_checkpoint(path)
        family = detect_family(ckpt)
        try:  # a registered family only: a file may say what it is, never which code to import
            target = family_adapter(family)
        except (AdapterError, RegistryError) as err:  # e.g. a protobench file of a plugin not installed here
            raise AdapterError(f"{path} was written by adapter {family!r}, which is not installed here ({err}): "
                               "install the plugin that provides it, or pass --adapter package.module:Class "
                               "if you trust that code") from None
        return target.from_checkpoint(ckpt, **options)


def describe() -> list[dict[str, str]]:
    """One row per registered family for `protobench adapters` (imports them all; a plugin that
    cannot be imported is listed with the reason)."""
    rows = []
    for name, source in FAMILIES.sources().items():
        row = {"name": name, "family": "", "paper": "", "license": "", "finetune": "", "source": source}
        try:
            cls = FAMILIES.get(name)
        except Exception as err:  # noqa: BLE001 - listing must show a broken plugin, not stop at it
            row["family"] = f"cannot be imported ({' '.join(str(err).split())[:120]})"
            rows.append(row)
            continue
        facts = cls.facts
        trains = all(getattr(cls, hook) is not getattr(PrototypeAdapter, hook)
                     for hook in ("training_loss", "parameter_groups"))
        row.update(family=cls.display_name(), paper=facts.paper if facts else "",
                   license=facts.license if facts else "", finetune="yes" if trains else "no")
        rows.append(row)
    return rows
