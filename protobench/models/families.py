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

import warnings
from typing import Any

from protobench.errors import AdapterError, ProtobenchWarning
from protobench.models.adapter import PrototypeAdapter
from protobench.registry import Registry

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
                          reserved={"auto": "--adapter auto means 'tell the family from the file'"},
                          package=BUILTIN_PACKAGE)


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
