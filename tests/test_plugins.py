"""Third-party adapters: the example in docs/adapters.md, by import path and by entry point."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_image_folder
from protobench.models.families import FAMILIES
from protobench.cli.families import describe
from protobench.models.lookup import get_adapter
from protobench.errors import AdapterError, ProtobenchError, ProtobenchWarning
from test_cli import assert_one_line_error, invoke

DOC = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"


def doc_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (example,) = [b for b in blocks if b.startswith('"""mylab_adapter.py')]
    return example


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The doc's example as an importable module `mylab_adapter`, plus a checkpoint for it."""
    (tmp_path / "mylab_adapter.py").write_text(doc_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mylab_adapter", raising=False)
    import mylab_adapter

    torch.manual_seed(0)
    ckpt = tmp_path / "cosine.pt"
    torch.save(mylab_adapter.CosineProtoNet().state_dict(), ckpt)
    yield mylab_adapter, ckpt
    sys.modules.pop("mylab_adapter", None)


def test_doc_example_is_complete_and_short():
    assert len(doc_example().strip().splitlines()) < 50


def test_doc_example_runs_through_the_cli(plugin, tmp_path):
    module, ckpt = plugin
    data = write_image_folder(tmp_path / "data", classes=3, per_class=2, size=32)
    result = invoke("evaluate", "--adapter", "mylab_adapter:CosineAdapter", "--ckpt", ckpt, "--data", data,
                    "--out", tmp_path / "out", "--steps", 2)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["adapter"] == "cosine" and meta["model_info"]["num_prototypes"] == 6
    adapter = get_adapter("mylab_adapter:CosineAdapter").load(str(ckpt))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps, logits = adapter(x)
        z = torch.nn.functional.normalize(adapter.model.features(x), dim=1)
        p = adapter.model.prototypes / adapter.model.prototypes.norm(dim=1, keepdim=True)
        for j in range(6):  # cosine of every location to prototype j
            assert torch.allclose(maps[:, j], (z * p[j][None, :, None, None]).sum(dim=1), atol=1e-6)
    assert maps.shape == (2, 6, 8, 8) and logits.shape == (2, 3)


def write_dist_info(site: Path, entry: str) -> None:
    info = site / "mylab-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[protobench.adapters]\n{entry}\n")


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(entry): a distribution with that `protobench.adapters` entry point, seen by FAMILIES
    (which reads entry points once per process: here, again); its families are gone afterwards."""
    before = set(FAMILIES.names())

    def install(entry: str) -> None:
        write_dist_info(tmp_path / "site", entry)
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        monkeypatch.setattr(FAMILIES, "_plugins_read", False)

    yield install
    for name in set(FAMILIES.names()) - before:
        FAMILIES.remove(name)


def test_entry_point_plugin_is_listed_and_loadable(plugin, install):
    _, ckpt = plugin
    install("cosine = mylab_adapter:CosineAdapter")
    assert "cosine" in FAMILIES.names()
    assert "cosine" in invoke("adapters").stdout
    assert get_adapter("cosine").load(str(ckpt)).info.num_classes == 3
    assert type(get_adapter("auto").load(str(ckpt))).__name__ == "CosineAdapter"  # its claims_keys


def test_doc_example_reads_its_whole_model_pickles_without_running_them(plugin, install, tmp_path):
    module, _ = plugin
    torch.manual_seed(1)
    net = module.CosineProtoNet(num_classes=2, per_class=3).eval()
    path = tmp_path / "whole.pt"
    torch.save(net, path)  # names mylab_adapter.CosineProtoNet: read as a stand-in, never imported
    x = torch.randn(2, 3, 32, 32)
    by_path = get_adapter("mylab_adapter:CosineAdapter").load(str(path))  # unregistered: its own facts
    install("cosine = mylab_adapter:CosineAdapter")
    by_auto = get_adapter("auto").load(str(path))
    with torch.no_grad():
        expected = net(x)
        for adapter in (by_path, by_auto):
            assert adapter.model is not net and adapter.info.num_classes == 2
            assert all(torch.equal(a, b) for a, b in zip(adapter(x), expected))


def test_broken_plugin_gets_a_clear_error(install, tmp_path):
    install("broken = no_such_module_here:Adapter")
    with pytest.raises(ProtobenchError, match="cannot import model family 'broken' from 'no_such_module_here'"):
        get_adapter("broken")
    with pytest.raises(AdapterError, match="not a protobench.models.adapter.PrototypeAdapter"):
        get_adapter("json:dumps")
    result = invoke("convert", tmp_path / "x.pt", tmp_path / "x.safetensors", "--adapter", "broken")
    assert_one_line_error(result, "cannot import model family 'broken'")
    listed = invoke("adapters")  # the others are still listed, the broken one says why it is unusable
    assert listed.exit_code == 0 and "protopnet" in listed.stdout and "broken" in listed.stdout
    (row,) = [row for row in describe() if row["name"] == "broken"]
    assert row["family"].startswith("cannot be imported") and row["source"] == "plugin mylab"


def test_a_broken_plugin_leaves_the_other_families_usable(install, tmp_path):
    """Reading any checkpoint asks every family (detection, allow-list); a plugin that cannot be
    imported is left out with one warning instead of stopping every load."""
    import protobench.models.families as families
    from protobench.adapters.protopnet import ProtoPNetAdapter
    from protobench.errors import ProtobenchWarning

    path = tmp_path / "m.safetensors"
    ProtoPNetAdapter.tiny().save(str(path))
    install("broken = no_such_module_here:Adapter")
    families._BROKEN.discard("broken")
    with pytest.warns(ProtobenchWarning, match="plugin mylab model family 'broken' cannot be imported"):
        assert get_adapter("auto").load(str(path)).name == "protopnet"


def test_a_plugin_cannot_replace_a_builtin_family(plugin, install):
    """The built-in keeps its name, one warning names the plugin, and the plugin's other names work."""
    install("protopnet = mylab_adapter:CosineAdapter\ncosine = mylab_adapter:CosineAdapter")
    with pytest.warns(ProtobenchWarning, match="model family 'protopnet' of plugin mylab "
                                               "\\(mylab_adapter:CosineAdapter\\) is left out: the name is taken"):
        assert get_adapter("protopnet").__name__ == "ProtoPNetAdapter"
    assert get_adapter("cosine").__name__ == "CosineAdapter"


def test_registering_a_taken_name_needs_replace(plugin):
    module, _ = plugin
    with pytest.raises(ProtobenchError, match="model family 'protopnet' is already registered.*replace=True"):
        FAMILIES.add("protopnet", module.CosineAdapter)
    assert get_adapter("protopnet").__name__ == "ProtoPNetAdapter"
    with pytest.raises(ProtobenchError, match="must be a protobench.models.adapter.PrototypeAdapter subclass"):
        FAMILIES.add("not-an-adapter", dict)
