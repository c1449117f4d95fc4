"""`--adapter NAME`: a registered family, `auto` (told from the checkpoint), or `package.module:Class`."""

from __future__ import annotations

import importlib
from typing import Any

from protobench.errors import AdapterError
from protobench.models.adapter import PrototypeAdapter
from protobench.models.detect import detect_family, read_family_checkpoint
from protobench.models.families import FAMILIES, is_adapter_class, usable_families
from protobench.registry import RegistryError


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
