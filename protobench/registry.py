"""One registry class for every extension point: model families, metrics, attacks, regions, dataset layouts.

    ATTACKS = Registry("attack", group="protobench.attacks", check=callable, expects="a function",
                       package="protobench.attacks")   # built-ins: one module per entry, named after it
    ATTACKS.add("pgd-like", "pkg.attacks:fn")              # lazy: imported on first get()
    ATTACKS.add("pgd-family", "pkg.attacks")               # a module whose import registers its entries

    @ATTACKS.register("noise")                             # eager, as a decorator
    def noise(...): ...

    ATTACKS.get("pgd")          # the object, type-checked; unknown names get a did-you-mean
    ATTACKS.names()             # every name, built-in and plugin, without importing any of them

Built-ins are found one way for every registry: the registry's `package` is a folder whose every
module (except those starting with `_`) is the built-in entry of its own name. The modules are
listed without being imported; the first lookup of a name imports its module, which registers
itself (`@ATTACKS.register("pgd")`, `METRICS.add(...)`). Adding a built-in is adding one file.

Names are unique: registering a taken name raises RegistryError unless `replace=True` says that
replacing it is meant. An installed plugin that claims a taken name is left out with one warning
naming both sources; two plugins claiming one name make that name (and only it) unusable. Installed packages add entries through the registry's entry-point group
(`[project.entry-points."protobench.attacks"] myattack = "pkg.mod:fn"`); a plugin can never take
a built-in's name. Nothing is imported until an entry is asked for, so `protobench --help` stays
free of torch. Only the user's code and installed entry points name modules: a name read from a
file (a checkpoint's metadata, a result directory) is only ever looked up with `get`.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from protobench.errors import ProtobenchError, ProtobenchWarning

T = TypeVar("T")


class RegistryError(ProtobenchError):
    """An unknown name, a clash between two entries, or an entry of the wrong kind."""


@dataclass
class _Entry:
    target: Any  # the object, or "module:attr" / "module" until imported
    source: str  # 'built-in', 'plugin <dist>', or 'registered at run time'
    lazy: bool


class Registry(Generic[T]):
    """Name -> object, for one kind of extension (see the module docstring).

    Args:
        kind: what an entry is, for messages ('model family', 'metric', ...).
        group: the entry-point group plugins register under (None: no plugins).
        check: accepts a resolved object; an entry that fails it is refused.
        expects: what `check` wants, in words, for the error message.
        reserved: names no entry may take (name -> why), e.g. 'auto' for model families.
        package: the package of built-ins, one module per entry named after it (None: none).
    """

    def __init__(self, kind: str, group: str | None = None, check: Callable[[Any], bool] | None = None,
                 expects: str = "", reserved: dict[str, str] | None = None, package: str | None = None):
        self.kind, self.group, self.check, self.expects = kind, group, check, expects
        self.reserved = dict(reserved or {})
        self.package = package
        self._entries: dict[str, _Entry] = {}
        self._refused: dict[str, str] = {}  # names two plugins claim -> why they cannot be used
        self._builtins_read = False
        self._plugins_read = False
        self._importing: set[str] = set()  # lazy entries whose module is being imported right now

    # --- adding -----------------------------------------------------------------------------
    def add(self, name: str, target: Any, *, replace: bool = False, source: str = "registered at run time") -> Any:
        """Register `target` (an object, or a "module:attr" / "module" string imported lazily); returns it."""
        self._check_name(name)
        self._read_builtins()
        old = self._entries.get(name)
        if old is not None and not replace and not (name in self._importing or self._materializes(old, target)):
            raise RegistryError(f"{self.kind} {name!r} is already registered ({old.source}): choose another "
                                "name, or pass replace=True to replace it on purpose")
        lazy = isinstance(target, str)
        if not lazy:
            self._validate(name, target)
        self._entries[name] = _Entry(target, source if old is None or replace else old.source, lazy)
        return target

    def register(self, name: str, *, replace: bool = False, source: str = "registered at run time"
                 ) -> Callable[[T], T]:
        """Decorator form of `add` for objects defined in the registering module."""

        def wrap(obj: T) -> T:
            return self.add(name, obj, replace=replace, source=source)

        return wrap

    def remove(self, name: str) -> None:
        """Forget an entry (for tests and plugins that undo what they registered)."""
        self._entries.pop(name, None)

    # --- looking up -------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The object registered as `name` (imported on first use); RegistryError if unknown."""
        self._read_plugins()
        entry = self._entries.get(name)
        if entry is None and name in self._refused:
            raise RegistryError(self._refused[name])
        if entry is None:
            raise RegistryError(self.unknown(name))
        if entry.lazy:
            obj = self._import(name, entry)
            self._validate(name, obj)
            entry = self._entries[name] = _Entry(obj, entry.source, False)
        return entry.target

    def names(self) -> list[str]:
        """Every registered name, sorted (nothing imported)."""
        self._read_plugins()
        return sorted(self._entries)

    def sources(self) -> dict[str, str]:
        """Name -> where the entry comes from ('built-in', 'plugin <dist>', ...)."""
        self._read_plugins()
        return {name: self._entries[name].source for name in sorted(self._entries)}

    def __contains__(self, name: object) -> bool:
        self._read_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        """(name, object) for every entry, importing the lazy ones."""
        return [(name, self.get(name)) for name in self.names()]

    def unknown(self, name: str) -> str:
        """The message for a name nobody registered, with a did-you-mean."""
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(known) or 'none'}"

    # --- internals --------------------------------------------------------------------------
    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or ":" in name or name != name.strip():
            raise RegistryError(f"{name!r} is not a valid {self.kind} name (a non-empty word without ':')")
        if name in self.reserved:
            raise RegistryError(f"{name!r} cannot be a {self.kind} name: {self.reserved[name]}")

    def _materializes(self, old: _Entry, target: Any) -> bool:
        """Whether `target` is the object a lazy entry stands for (its module registering itself
        while it is imported), or the very same object registered twice."""
        if not old.lazy:
            return old.target is target
        module, _, attr = old.target.partition(":")
        loading = getattr(getattr(sys.modules.get(module), "__spec__", None), "_initializing", False)
        return (not attr and bool(loading)) or getattr(target, "__module__", None) == module

    def _read_builtins(self) -> None:
        """List the package's modules (without importing them): each is the built-in of its name."""
        if self._builtins_read or self.package is None:
            return
        self._builtins_read = True
        for name in builtin_modules(self.package):
            if name not in self._entries:
                self._check_name(name)
                self._entries[name] = _Entry(f"{self.package}.{name}", "built-in", True)

    def _validate(self, name: str, obj: Any) -> None:
        """Refuse an object of the wrong kind (subclasses may also tell the object its name here)."""
        if self.check is not None and not self.check(obj):
            raise RegistryError(f"{self.kind} {name!r} must be {self.expects or 'of the right kind'}, "
                                f"got {obj!r}")

    def _import(self, name: str, entry: _Entry) -> Any:
        module_name, _, attr = entry.target.partition(":")
        self._importing.add(name)  # the module may register this very entry while it is imported
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise RegistryError(f"cannot import {self.kind} {name!r} from {module_name!r} ({err}); "
                                "is its package installed?") from err
        finally:
            self._importing.discard(name)
        if not attr:  # importing the module registered the entry (a decorator in it)
            found = self._entries.get(name)
            if found is None or found.lazy:
                raise RegistryError(f"importing {module_name!r} did not register {self.kind} {name!r}")
            return found.target
        obj: Any = module
        try:
            for part in attr.split("."):  # "module:Class.attribute", as entry points allow
                obj = getattr(obj, part)
        except AttributeError:
            raise RegistryError(f"module {module_name!r} has no {attr!r} ({self.kind} {name!r})") from None
        return obj

    def _read_plugins(self) -> None:
        self._read_builtins()
        if self._plugins_read or self.group is None:
            return
        self._plugins_read = True
        for ep in _entry_points(self.group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
            source = f"plugin {dist}"
            taken = self._entries.get(ep.name)
            if taken is not None and self._materializes(_Entry(ep.value, "", True), taken.target):
                continue  # the plugin's module was imported first and registered itself: the same entry
            if ep.name in self._refused:
                continue  # already claimed twice and warned about
            if taken is not None:
                first = f"{taken.source} ({taken.target})" if taken.lazy and taken.source.startswith("plugin") \
                    else taken.source
                self._clash(ep.name, first, f"{source} ({ep.value})")
                continue
            try:
                self._check_name(ep.name)
            except RegistryError as err:
                warnings.warn(f"{source} ({ep.value}) is left out: {err}", ProtobenchWarning, stacklevel=3)
                continue
            self._entries[ep.name] = _Entry(ep.value, source, True)

    def _clash(self, name: str, first: str, second: str) -> None:
        """Two sources claim one name: a built-in (or one registered at run time) keeps it and the
        plugin is left out; two plugins make the name unusable. Either way one warning names both,
        and every other name keeps working."""
        if first.startswith("plugin"):
            del self._entries[name]
            self._refused[name] = (f"{self.kind} {name!r} is claimed by both {first} and {second}: "
                                   "uninstall or rename one of them")
            warnings.warn(self._refused[name], ProtobenchWarning, stacklevel=4)
        else:
            warnings.warn(f"{self.kind} {name!r} of {second} is left out: the name is taken ({first}); "
                          "rename the plugin's entry", ProtobenchWarning, stacklevel=4)


def builtin_modules(package: str) -> list[str]:
    """The modules of a built-in package (its `__init__` imports nothing), `_`-private ones left out."""
    found = importlib.import_module(package)
    return sorted(m.name for m in pkgutil.iter_modules(found.__path__) if not m.name.startswith("_"))


def _entry_points(group: str) -> list:
    from importlib.metadata import entry_points

    return list(entry_points(group=group))
