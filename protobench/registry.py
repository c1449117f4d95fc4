"""One registry class for every extension point: model families, metrics, attacks, dataset layouts.

    ATTACKS = Registry("attack", group="protobench.attacks", check=callable, expects="a function")
    ATTACKS.add("pgd", "protobench.core.attack:pgd")       # lazy: imported on first get()
    ATTACKS.add("pgd-family", "pkg.attacks")               # a module whose import registers its entries

    @ATTACKS.register("noise")                             # eager, as a decorator
    def noise(...): ...

    ATTACKS.get("pgd")          # the object, type-checked; unknown names get a did-you-mean
    ATTACKS.names()             # every name, built-in and plugin, without importing any of them

Names are unique: registering a taken name raises RegistryError unless `replace=True` says that
replacing it is meant. Installed packages add entries through the registry's entry-point group
(`[project.entry-points."protobench.attacks"] myattack = "pkg.mod:fn"`); a plugin can never take
a built-in's name. Nothing is imported until an entry is asked for, so `protobench --help` stays
free of torch. Only the user's code and installed entry points name modules: a name read from a
file (a checkpoint's metadata, a result directory) is only ever looked up with `get`.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from protobench.errors import ProtobenchError

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
    """

    def __init__(self, kind: str, group: str | None = None, check: Callable[[Any], bool] | None = None,
                 expects: str = "", reserved: dict[str, str] | None = None):
        self.kind, self.group, self.check, self.expects = kind, group, check, expects
        self.reserved = dict(reserved or {})
        self._entries: dict[str, _Entry] = {}
        self._plugins_read = False
        self._importing: set[str] = set()  # lazy entries whose module is being imported right now

    # --- adding -----------------------------------------------------------------------------
    def add(self, name: str, target: Any, *, replace: bool = False, source: str = "registered at run time") -> None:
        """Register `target` (an object, or a "module:attr" / "module" string imported lazily)."""
        self._check_name(name)
        old = self._entries.get(name)
        if old is not None and not replace and not (name in self._importing or self._materializes(old, target)):
            raise RegistryError(f"{self.kind} {name!r} is already registered ({old.source}): choose another "
                                "name, or pass replace=True to replace it on purpose")
        lazy = isinstance(target, str)
        if not lazy:
            self._validate(name, target)
        self._entries[name] = _Entry(target, source if old is None or replace else old.source, lazy)

    def register(self, name: str, *, replace: bool = False, source: str = "registered at run time"
                 ) -> Callable[[T], T]:
        """Decorator form of `add` for objects defined in the registering module."""

        def wrap(obj: T) -> T:
            self.add(name, obj, replace=replace, source=source)
            return obj

        return wrap

    def remove(self, name: str) -> None:
        """Forget an entry (for tests and plugins that undo what they registered)."""
        self._entries.pop(name, None)

    # --- looking up -------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The object registered as `name` (imported on first use); RegistryError if unknown."""
        self._read_plugins()
        entry = self._entries.get(name)
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
        module = old.target.partition(":")[0]
        return getattr(target, "__module__", None) == module

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
        if self._plugins_read or self.group is None:
            return
        self._plugins_read = True
        for ep in _entry_points(self.group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
            taken = self._entries.get(ep.name)
            if taken is not None and self._materializes(_Entry(ep.value, "", True), taken.target):
                continue  # the plugin's module was imported first and registered itself: the same entry
            if taken is not None:
                raise RegistryError(f"the plugin {ep.value!r} from {dist} registers {self.kind} {ep.name!r}, "
                                    f"which is already taken ({taken.source}): rename the plugin")
            self._check_name(ep.name)
            self._entries[ep.name] = _Entry(ep.value, f"plugin {dist}", True)


def _entry_points(group: str) -> list:
    from importlib.metadata import entry_points

    return list(entry_points(group=group))
