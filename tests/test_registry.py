"""The one registry class behind every extension point (protobench.registry)."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest

from protobench import registry as reg
from protobench.errors import ProtobenchWarning
from protobench.registry import Registry, RegistryError


def make(group=None) -> Registry:
    return Registry("widget", group=group, check=callable, expects="a callable")


@pytest.fixture
def fake_module(monkeypatch):
    """A module `fake_widgets` (importing it counts the imports) with two callables."""
    imported = []

    def install(name="fake_widgets", register_into=None):
        module = types.ModuleType(name)

        def spin():
            return "spin"

        spin.__module__ = state.get("module_of_objects", name)
        module.spin, module.not_callable = spin, 3
        module.Nested = types.SimpleNamespace(fn=spin)
        if register_into is not None:
            register_into.add("self-registered", spin)
        imported.append(name)
        return module

    class Finder:
        def find_spec(self, fullname, path=None, target=None):
            if fullname.startswith("fake_widgets"):
                import importlib.util

                loader = types.SimpleNamespace(create_module=lambda spec: install(fullname, state.get("into")),
                                               exec_module=lambda module: None)
                return importlib.util.spec_from_loader(fullname, loader)
            return None

    state: dict = {}
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    yield imported, state
    for name in [n for n in sys.modules if n.startswith("fake_widgets")]:
        del sys.modules[name]


def test_lazy_entries_import_only_when_asked_for(fake_module):
    imported, _ = fake_module
    r = make()
    r.add("spin", "fake_widgets:spin")
    assert r.names() == ["spin"] and "spin" in r and imported == []
    assert r.get("spin")() == "spin" and imported == ["fake_widgets"]
    assert r.get("spin") is r.get("spin") and imported == ["fake_widgets"]  # imported once
    r.add("nested", "fake_widgets:Nested.fn")
    assert r.get("nested")() == "spin"


def test_a_module_that_registers_itself_when_imported(fake_module):
    _, state = fake_module
    r = make()
    state["into"] = r
    r.add("self-registered", "fake_widgets")  # placeholder: importing the module registers the real entry
    assert r.get("self-registered")() == "spin"
    state["into"] = None
    r.add("missing", "fake_widgets_other")
    with pytest.raises(RegistryError, match="importing .fake_widgets_other. did not register widget 'missing'"):
        r.get("missing")


def test_a_taken_name_is_refused_unless_replacing_is_asked_for():
    r = make()
    first, second = (lambda: 1), (lambda: 2)
    r.add("a", first, source="built-in")
    r.add("a", first)  # the very same object again: harmless
    with pytest.raises(RegistryError, match=r"widget 'a' is already registered \(built-in\).*replace=True"):
        r.add("a", second)
    r.add("a", second, replace=True)
    assert r.get("a") is second


def test_the_decorator_registers_and_returns_the_object():
    r = make()

    @r.register("double")
    def double(x):
        return 2 * x

    assert double(2) == 4 and r.get("double") is double and r.sources() == {"double": "registered at run time"}


def test_objects_of_the_wrong_kind_are_refused(fake_module):
    r = make()
    with pytest.raises(RegistryError, match="widget 'three' must be a callable, got 3"):
        r.add("three", 3)
    r.add("lazy-three", "fake_widgets:not_callable")  # checked when it is imported
    with pytest.raises(RegistryError, match="must be a callable"):
        r.get("lazy-three")


def test_unknown_names_get_a_did_you_mean():
    r = make()
    r.add("protopnet", print)
    r.add("tesnet", print)
    with pytest.raises(RegistryError) as err:
        r.get("protopent")
    assert str(err.value) == "unknown widget 'protopent'. Did you mean 'protopnet'? Known: protopnet, tesnet"
    with pytest.raises(RegistryError, match="unknown widget 'zzz'. Known: protopnet, tesnet$"):
        r.get("zzz")


@pytest.mark.parametrize("name", ["", "a:b", " a", 3])
def test_names_are_plain_words(name):
    with pytest.raises(RegistryError, match="is not a valid widget name"):
        make().add(name, print)


def test_import_failures_are_one_line(fake_module):
    r = make()
    r.add("gone", "no_such_module_anywhere:fn")
    with pytest.raises(RegistryError, match="cannot import widget 'gone' from 'no_such_module_anywhere'.*installed"):
        r.get("gone")
    r.add("noattr", "fake_widgets:nope")
    with pytest.raises(RegistryError, match="module 'fake_widgets' has no 'nope'"):
        r.get("noattr")


def plugins(monkeypatch, *eps):
    monkeypatch.setattr(reg, "_entry_points", lambda group: list(eps) if group == "protobench.widgets" else [])


def test_plugins_come_from_the_entry_point_group(monkeypatch, fake_module):
    imported, _ = fake_module
    plugins(monkeypatch, EntryPoint("spinner", "fake_widgets:spin", "protobench.widgets"))
    r = make(group="protobench.widgets")
    r.add("builtin", print)
    assert r.names() == ["builtin", "spinner"] and imported == []  # listed without importing
    assert r.get("spinner")() == "spin"
    assert r.sources()["spinner"].startswith("plugin")


def test_a_plugin_cannot_take_a_builtin_name_and_the_rest_keeps_working(monkeypatch, fake_module):
    plugins(monkeypatch, EntryPoint("builtin", "fake_widgets:spin", "protobench.widgets"),
            EntryPoint("spinner", "fake_widgets:spin", "protobench.widgets"))
    r = make(group="protobench.widgets")
    r.add("builtin", print)
    with pytest.warns(ProtobenchWarning) as caught:
        assert r.get("builtin") is print  # the built-in keeps its name
        assert r.get("spinner")() == "spin"  # the plugin's other entry works
        assert r.names() == ["builtin", "spinner"]
    (warning,) = [str(w.message) for w in caught]  # once, naming both sources
    assert "widget 'builtin' of plugin an installed package (fake_widgets:spin) is left out" in warning
    assert "taken (registered at run time)" in warning and "rename the plugin" in warning


def test_two_plugins_claiming_one_name_refuse_only_that_name(monkeypatch, fake_module):
    plugins(monkeypatch, EntryPoint("twin", "fake_widgets:spin", "protobench.widgets"),
            EntryPoint("twin", "fake_widgets.other:spin", "protobench.widgets"),
            EntryPoint("spinner", "fake_widgets:spin", "protobench.widgets"))
    r = make(group="protobench.widgets")
    with pytest.warns(ProtobenchWarning, match="'twin' is claimed by both plugin .*fake_widgets:spin.* and "
                                               "plugin .*fake_widgets.other:spin"):
        assert r.names() == ["spinner"]
    assert r.get("spinner")() == "spin"
    with pytest.raises(RegistryError, match="'twin' is claimed by both .*uninstall or rename one of them"):
        r.get("twin")


def builtin_package(tmp_path, monkeypatch, files):
    """A package `toy_builtins` on sys.path whose modules are `files` (name -> source)."""
    root = tmp_path / "toy_builtins"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name, text in files.items():
        (root / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("toy_builtins")]:
        monkeypatch.delitem(sys.modules, name)
    return "toy_builtins"


def test_builtins_are_the_modules_of_a_package_listed_without_import(tmp_path, monkeypatch):
    registering = "from test_registry import TOYS\n@TOYS.register({name!r})\ndef fn():\n    return {name!r}\n"
    package = builtin_package(tmp_path, monkeypatch, {
        "spin": registering.format(name="spin"), "flip": registering.format(name="flip"),
        "_helper": "raise RuntimeError('a private module is never imported')",
        "silent": "x = 1  # registers nothing"})
    global TOYS
    TOYS = Registry("widget", check=callable, expects="a callable", package=package)
    assert TOYS.names() == ["flip", "silent", "spin"] and not any(m.startswith("toy_builtins.") for m in sys.modules)
    assert TOYS.sources() == {"flip": "built-in", "silent": "built-in", "spin": "built-in"}
    assert TOYS.get("spin")() == "spin" and "toy_builtins.spin" in sys.modules and "toy_builtins.flip" not in sys.modules
    with pytest.raises(RegistryError, match="importing 'toy_builtins.silent' did not register widget 'silent'"):
        TOYS.get("silent")
    with pytest.raises(RegistryError, match="'spin' is already registered \\(built-in\\)"):
        TOYS.add("spin", print)  # a built-in's name is not taken twice by accident
    import toy_builtins.flip  # imported directly (not through the registry) it registers itself, no clash

    assert TOYS.get("flip") is toy_builtins.flip.fn


def test_reserved_names_are_refused_also_for_plugins(monkeypatch):
    r = Registry("widget", group="protobench.widgets", reserved={"auto": "it means something else"})
    with pytest.raises(RegistryError, match="'auto' cannot be a widget name: it means something else"):
        r.add("auto", print)
    plugins(monkeypatch, EntryPoint("auto", "fake_widgets:spin", "protobench.widgets"))
    with pytest.warns(ProtobenchWarning, match="plugin .*fake_widgets:spin.* is left out: 'auto' cannot be a widget"):
        assert r.names() == []


def test_a_plugin_module_that_registered_itself_is_not_a_clash(monkeypatch, fake_module):
    """A plugin imported (and self-registered by its decorator) before the entry points are read."""
    import fake_widgets

    plugins(monkeypatch, EntryPoint("spinner", "fake_widgets:spin", "protobench.widgets"))
    r = make(group="protobench.widgets")
    r.add("spinner", fake_widgets.spin, source="registered at run time")
    assert r.get("spinner") is fake_widgets.spin


def test_an_entry_registered_by_its_own_module_while_imported_is_no_clash(fake_module):
    """A plugin whose module both is the entry point and registers the object itself (e.g. a spec
    object whose __module__ is protobench's, not the plugin's) materializes without a clash."""
    _, state = fake_module
    r = make()
    state.update(into=r, module_of_objects="protobench.core.metrics")  # as a MetricSpec instance reports
    r.add("self-registered", "fake_widgets:spin")  # the module registers 'self-registered' as it loads
    assert r.get("self-registered")() == "spin"
