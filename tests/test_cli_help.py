"""The command line as a new user first meets it: --version, bare `protobench`, shell completion, and help
texts without Python types, with one style of default and the registries' names written out."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

import protobench
from protobench.cli.app import app

runner = CliRunner()


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], prog_name="protobench", **kwargs)


def commands() -> list[list[str]]:
    """Every command's path (['evaluate'], ['demo', 'export'], ...), read from the app itself."""
    found = []

    def walk(group, path: list[str]) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, [*path, name])
            else:
                found.append([*path, name])

    walk(typer.main.get_command(app), [])
    return found


def helps() -> dict[str, str]:
    out = {}
    for path in commands():
        result = invoke(*path, "--help", env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        out[" ".join(path)] = result.output
    return out


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"protobench {protobench.__version__}"


def test_bare_protobench_prints_the_help():
    result = invoke()
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: protobench") and "Missing command" not in result.output
    assert all(path[0] in result.output for path in commands())


def test_shell_completion():
    script = invoke("--show-completion", env={"SHELL": "/bin/bash"})
    assert script.exit_code == 0 and "complete -o default -F _protobench_completion protobench" in script.output
    words = invoke(env={"_PROTOBENCH_COMPLETE": "complete_bash", "COMP_WORDS": "protobench eva", "COMP_CWORD": "1"})
    assert words.output.split() == ["evaluate"]
    options = invoke(env={"_PROTOBENCH_COMPLETE": "complete_bash", "COMP_WORDS": "protobench evaluate --sel",
                          "COMP_CWORD": "2"})
    assert options.output.split() == ["--select"]


def test_help_shows_no_python_types_and_one_style_of_default():
    texts = helps()
    assert {"evaluate", "compare", "finetune", "convert", "report", "adapters", "demo export"} <= set(texts)
    for name, text in texts.items():
        flat = " ".join(text.partition("\n\n")[2].split())  # the usage line's [OPTIONS] and [ARGS] are click's
        assert not re.search(r"<(str|int|float|bool|path|Path|list\[)", text), name
        assert "(default" not in flat, name
        assert not re.search(r"\[(?!default: |required\]|:N\]|:train\]|:split\]|ARGS\])", flat), (name, flat)
        # every default set off the same way: two spaces, then [default: ...]
        assert not re.search(r"\S \[default: ", " ".join(text.split("\n"))), name
        assert not re.search(r"\[default: [^\]]*\]\s+\[default: ", flat), name  # one default per option


def test_select_values_are_explained():
    flat = " ".join(helps()["evaluate"].split())
    assert "top-proto (the image's most active prototype, of any class)" in flat
    assert "gt-protos (all the prototypes of the image's true class" in flat


def test_lists_in_the_help_come_from_the_registries():
    from protobench.core.attack import ATTACKS
    from protobench.core.regions import REGIONS
    from protobench.data.layouts import LAYOUTS
    from protobench.run.compare import tolerance_names

    ATTACKS.add("help_probe_attack", lambda *a, **k: None)
    try:
        texts = {name: " ".join(text.split()) for name, text in helps().items()}
    finally:
        ATTACKS.remove("help_probe_attack")
    evaluate = texts["evaluate"]
    assert "help_probe_attack" in evaluate  # a name registered now: nothing copied by hand
    for registry in (ATTACKS, REGIONS):
        assert all(name in evaluate for name in registry.names())
    for text in (evaluate, texts["finetune"]):
        assert f"Dataset layout: {', '.join(LAYOUTS.names())}." in text
    assert f"METRIC one of {' '.join(tolerance_names())};" in texts["compare"]
