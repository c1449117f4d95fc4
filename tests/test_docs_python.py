"""docs/python.md runs as it is written: its Python blocks, in order, in one namespace, as a notebook would."""

from __future__ import annotations

import re
from pathlib import Path

import protobench

DOC = Path(__file__).parents[1] / "docs" / "python.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_python_walk_through_runs(tmp_path, monkeypatch, capsys):
    text = DOC.read_text(encoding="utf-8")
    code = blocks(text)
    assert len(code) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_python"}
    for number, block in enumerate(code, 1):
        exec(compile(block, f"{DOC.name} block {number}", "exec"), namespace)  # noqa: S102 - the doc's own code
    printed = capsys.readouterr().out
    assert namespace["results"].scores["images"] == 16
    assert (tmp_path / "results" / "demo" / "report" / "report.html").is_file()
    assert isinstance(namespace["custom"], protobench.Model) and namespace["custom"].info.num_prototypes == 12
    assert printed.count("epoch ") == 2
    # the error the page quotes is the one the code prints
    quoted = re.search(r"prints `(evaluate's data is .*?)`\.", text, flags=re.S).group(1)
    assert " ".join(quoted.split()) in printed
