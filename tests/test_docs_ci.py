"""docs/ci.md stays true: its YAML parses and every option it gives protobench exists."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protobench.cli.app import app

DOC = Path(__file__).resolve().parent.parent / "docs" / "ci.md"


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def commands():
    """Every `protobench evaluate|compare ...` in the doc, continuation lines joined."""
    text = "\n".join(blocks("yaml") + blocks("bash")).replace("\\\n", " ")
    return re.findall(r"protobench (evaluate|compare)([^\n]*)", text)


def test_every_option_in_the_ci_doc_exists():
    found = commands()
    assert {name for name, _ in found} == {"evaluate", "compare"}
    assert {"--format", "--tol", "--limit", "--seed"} <= set(re.findall(r"--[a-z-]+", str(found)))
    runner = CliRunner()
    for name, args in found:
        help_text = runner.invoke(app, [name, "--help"], env={"COLUMNS": "300"}).stdout
        for option in re.findall(r"(--[a-z][a-z-]*)", args):
            assert option in help_text, f"docs/ci.md uses protobench {name} {option}, which does not exist"


def test_the_ci_yaml_parses():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(blocks("yaml")[0])
    steps = workflow["jobs"]["protobench"]["steps"]
    assert any("protobench compare" in step.get("run", "") for step in steps)
    for snippet in blocks("yaml")[1:]:
        yaml.safe_load(snippet)


def test_the_tolerance_table_is_the_metric_table():
    """docs/ci.md's tolerance table lists the built-in metrics as protobench.core.metrics defines them."""
    from protobench.core.metrics import specs

    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (higher|lower) \| ([0-9.]+) \(", DOC.read_text(), flags=re.M)
    documented = [(name, column, worse == "higher", float(tol)) for name, column, worse, tol in rows]
    assert documented == [(s.name, s.column, s.higher_is_worse, s.tolerance) for s in specs()]
