"""docs/report.md stays true: its commands' options exist, its tolerance table is the code's, its screenshot is there."""

import re
from pathlib import Path

from typer.testing import CliRunner

from protobench.cli.app import app
from protobench.report.pixels import TOLERANCES

DOC = Path(__file__).resolve().parent.parent / "docs" / "report.md"


def test_every_option_in_the_report_doc_exists():
    text = "\n".join(re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S))
    found = re.findall(r"protobench (evaluate|report)([^\n#]*)", text)
    assert {name for name, _ in found} == {"evaluate", "report"}
    runner = CliRunner()
    for name, args in found:
        help_text = runner.invoke(app, [name, "--help"], env={"COLUMNS": "300"}).stdout
        for option in re.findall(r"(--[a-z][a-z-]*)", args):
            assert option in help_text, f"docs/report.md uses protobench {name} {option}, which does not exist"


def test_the_tolerance_table_is_the_code_s():
    rows = re.findall(r"^\| (`[^|]+`) \| ([^|]+) \| ([^|]+) \|$", DOC.read_text(), flags=re.M)

    def value(cell):
        cell = cell.strip()
        return {"equal": 0.0, "not compared": None}.get(cell, float(cell) if cell[0].isdigit() else cell)

    documented = {"cpu": {}, "gpu": {}}
    for columns, cpu, gpu in rows:
        for column in re.findall(r"`(\w+)`", columns):
            documented["cpu"][column], documented["gpu"][column] = value(cpu), value(gpu)
    for device in ("cpu", "gpu"):
        code = {column: float(limit) for column, limit in TOLERANCES[device].items()}
        doc = {column: limit for column, limit in documented[device].items() if limit is not None}
        assert doc == code, device


def test_the_screenshot_is_small_and_there():
    shot = DOC.parent / "img" / "report-demo.png"
    assert "](img/report-demo.png)" in DOC.read_text()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size < 400_000
