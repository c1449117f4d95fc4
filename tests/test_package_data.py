"""What an installation holds: every data file beside the code is named by pyproject.toml's package-data,
so a non-editable install (a wheel) carries it."""

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = {".py", ".pyc"}


def settings():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def data_files():
    """(package, file name) of each file beside the code of the installed packages."""
    tool = settings()
    where = tool.get("package-dir", {})
    for package in tool["packages"]:
        folder = ROOT / where.get(package, package.replace(".", "/"))
        yield from ((package, f.name) for f in sorted(folder.iterdir()) if f.is_file() and f.suffix not in CODE)


def test_every_data_file_beside_the_code_is_package_data():
    from protobench.demo import DEMO_CKPT, DEMO_RECORD, DEMO_SOURCES

    rules = settings()["package-data"]
    files = list(data_files())
    for shipped in (DEMO_CKPT, DEMO_RECORD, DEMO_SOURCES):  # what the demo reads from the installation
        assert ("protobench.demo", shipped.name) in files
    left_out = [(p, name) for p, name in files if not any(fnmatch.fnmatch(name, g) for g in rules.get(p, []))]
    assert not left_out, f"not in [tool.setuptools.package-data]: {left_out}"


@pytest.mark.slow
def test_a_wheel_holds_every_data_file(tmp_path):
    pytest.importorskip("wheel")  # building without network: setuptools and wheel from this environment
    source = tmp_path / "source"  # a copy: a build writes build/ and an egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                  ".pytest_cache", "protobench-results"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(source)], check=True, capture_output=True, timeout=600)
    names = zipfile.ZipFile(next(tmp_path.glob("protobench-*.whl"))).namelist()
    for package, name in data_files():
        assert f"{package.replace('.', '/')}/{name}" in names
