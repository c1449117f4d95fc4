"""Finished runs of a tiny model for the report's tests, and readers of the page they produce."""

from __future__ import annotations

import base64
import io
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_config, write_image_folder
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.cli.app import app

runner = CliRunner()
STEPS = ["--steps", "3", "--seed", "2"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def make_run(root: Path, *extra) -> Path:
    """A finished 12-image run of a tiny model (its checkpoint and data inside `root`), with examples kept."""
    ProtoPNetAdapter.from_config(tiny_config(), seed=0).save(str(root / "tiny.safetensors"))
    write_image_folder(root / "data")
    out = root / "run"
    result = invoke("evaluate", "--ckpt", root / "tiny.safetensors", "--data", root / "data", "--out", out, *STEPS,
                    "--save-examples", 2, *extra)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One run per test module; tests that change files copy it first (see `copy`)."""
    return make_run(tmp_path_factory.mktemp("finished"))


def copy(run: Path, tmp_path: Path) -> Path:
    """The run, its checkpoint and its data copied under tmp_path (meta.json's paths then point at the copies)."""
    import json

    root = tmp_path / "copy"
    shutil.copytree(run.parent, root)
    meta = json.loads((root / "run" / "meta.json").read_text())
    meta["checkpoint"] = str(root / "tiny.safetensors")
    meta["dataset"] = str(root / "data")
    (root / "run" / "meta.json").write_text(json.dumps(meta))
    return root / "run"


class Page(HTMLParser):
    """What the report page holds: its images, tag names, table rows, text and links."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.tags, self.rows, self.links, self.text, self.ids = [], [], [], [], [], []
        self._row = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "tr":
            self._row = []
        for name in ("href", "src"):
            if name in attrs:
                self.links.append(attrs[name])

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row is not None and data.strip():
            self._row.append(data.strip())


def decode(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
    image.load()
    assert image.format == "PNG"
    return image
