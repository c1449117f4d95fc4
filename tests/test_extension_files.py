"""Every kind of extension is one file: docs/architecture.md's worked examples (a family, a metric,
an attack, a region, and docs/datasets.md's layout), saved in their kind's built-in folder with
nothing else changed, or installed as a plugin package, run through `protobench evaluate`."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import write_image_folder
from protobench.core.attack import ATTACKS
from protobench.core.metrics import METRICS
from protobench.core.regions import REGIONS
from protobench.data.layouts import LAYOUTS
from protobench.models.families import FAMILIES
from test_cli import invoke

DOCS = Path(__file__).resolve().parents[1] / "docs"

# kind -> (registry, the name its file registers, the doc that shows it, how its code block starts)
EXAMPLES = {
    "family": (FAMILIES, "toynet", "architecture.md", '"""toynet:'),
    "metric": (METRICS, "ADROP", "architecture.md", '"""ADROP:'),
    "attack": (ATTACKS, "lowered", "architecture.md", '"""lowered:'),
    "region": (REGIONS, "band", "architecture.md", '"""band:'),
    "layout": (LAYOUTS, "csv", "datasets.md", '"""mylab_layout.py:'),
}
# the objects the plugin package's entry points name (a module registering its own entry is no clash)
ENTRY_OBJECTS = {"family": "ToyNetAdapter", "metric": "ADROP", "attack": "lowered", "region": "BAND", "layout": None}


def example(doc: str, start: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / doc).read_text(encoding="utf-8"), flags=re.S)
    (code,) = [b for b in blocks if b.startswith(start)]
    return code


@pytest.fixture
def in_tree(tmp_path, monkeypatch):
    """save(kind): the kind's worked example as one more module of its registry's built-in package
    (a test-only folder added to the package's path), as if the file were saved in protobench."""
    saved = []

    def save(kind: str) -> None:
        registry, name, doc, start = EXAMPLES[kind]
        package = importlib.import_module(registry.package)
        folder = tmp_path / "builtins" / kind
        folder.mkdir(parents=True)
        (folder / f"{name}.py").write_text(example(doc, start))
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
        monkeypatch.setattr(registry, "_builtins_read", False)  # the registry lists its folder again
        saved.append((registry, name))

    yield save
    for registry, name in saved:
        registry.remove(name)
        sys.modules.pop(f"{registry.package}.{name}", None)


def toy_checkpoint_and_data(tmp_path, tiny) -> tuple[Path, str]:
    """A ToyNet state dict as its own code saves it, and a labels.csv folder of 3 classes whose
    test split holds 2 of the 4 images of each class."""
    torch.save(tiny(seed=0).model.state_dict(), tmp_path / "toy.pth")
    data = write_image_folder(tmp_path / "data", classes=3, per_class=4, size=32)
    lines = ["image,label,split"] + [f"class{c}/img{i}.png,class{c},{'test' if i < 2 else 'train'}"
                                     for c in range(3) for i in range(4)]
    (Path(data) / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "toy.pth", data


def check_run(out: Path) -> None:
    meta = json.loads((out / "meta.json").read_text())
    per_image = pd.read_csv(out / "per_image.csv")
    assert meta["adapter"] == "toynet"  # told from the state dict by the family's claims_keys
    assert (meta["protocol"]["attack"], meta["protocol"]["region"]) == ("lowered", "band")
    assert len(per_image) == 6  # the csv layout's test split, not the 12 images ImageFolder would see
    assert per_image["ADROP"].tolist() == pytest.approx((per_image.act_before - per_image.act_after).tolist(),
                                                        abs=1e-5)
    assert (per_image.act_after != per_image.act_before).any()  # the attack moved something


def test_five_one_file_extensions_in_tree(in_tree, tmp_path):
    for kind in EXAMPLES:
        in_tree(kind)
    for registry, name, _, _ in EXAMPLES.values():  # found by the folder scan, without an import
        assert registry.sources()[name] == "built-in" and f"{registry.package}.{name}" not in sys.modules
    ckpt, data = toy_checkpoint_and_data(tmp_path, FAMILIES.get("toynet").tiny)
    result = invoke("evaluate", "--ckpt", ckpt, "--data", data, "--out", tmp_path / "out", "--attack", "lowered",
                    "--region", "band", "--steps", 1)
    assert result.exit_code == 0, result.output
    check_run(tmp_path / "out")
    assert "ADROP (activation drop)" in result.stdout  # the CLI's summary table
    listed = invoke("adapters")
    assert listed.exit_code == 0 and "ToyNet" in listed.stdout
    assert "lowered" in invoke("evaluate", "--attack", "lowerd", "--data", data).stderr  # did-you-mean knows it
    # the help texts list the built-ins of each folder, the new files among them (read again here:
    # the CLI's were made when it was imported; only the app module holds on to them)
    helptext = importlib.reload(importlib.import_module("protobench.cli.helptext"))
    assert "lowered" in helptext.ATTACK_HELP and "band" in helptext.REGION_HELP
    assert "csv" in helptext.DATASET_HELP and "ADROP" in helptext.METRIC_NAMES.split()


def test_the_same_files_as_a_plugin_package(tmp_path):
    """The worked examples as modules of an installed package, found through its entry points, in
    a fresh process."""
    site = tmp_path / "site"
    (site / "mylab-0.1.dist-info").mkdir(parents=True)
    groups = {"family": "protobench.adapters", "metric": "protobench.metrics", "attack": "protobench.attacks",
              "region": "protobench.regions", "layout": "protobench.datasets"}
    entries = []
    for kind, (_, name, doc, start) in EXAMPLES.items():
        code = example(doc, start)
        if kind == "layout":  # docs/datasets.md's plugin form: the instance as LAYOUT, no LAYOUTS.add
            code = code.replace('LAYOUTS.add("csv", CsvLayout())', "LAYOUT = CsvLayout()")
        (site / f"mylab_{kind}.py").write_text(code)
        entries.append(f"[{groups[kind]}]\n{name} = mylab_{kind}:{ENTRY_OBJECTS[kind] or 'LAYOUT'}\n")
    (site / "mylab-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab\nVersion: 0.1\n")
    (site / "mylab-0.1.dist-info" / "entry_points.txt").write_text("\n".join(entries))
    sys.path.insert(0, str(site))
    try:  # the ToyNet state dict, written by the plugin's own model class
        import mylab_family

        ckpt, data = toy_checkpoint_and_data(tmp_path, mylab_family.ToyNetAdapter.tiny)
    finally:
        sys.path.remove(str(site))
        FAMILIES.remove("toynet")
        sys.modules.pop("mylab_family", None)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "protobench", "evaluate", "--ckpt", str(ckpt), "--data", data,
                           "--out", str(out), "--attack", "lowered", "--region", "band", "--steps", "1"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "ProtobenchWarning" not in done.stderr  # no clash: each module registering its own entry is that entry
    check_run(out)
