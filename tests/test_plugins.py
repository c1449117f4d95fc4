"""Third-party adapters: the example in docs/adapters.md, by import path and by entry point."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_image_folder
from protobench.models.adapter import available_adapters, get_adapter
from protobench.errors import AdapterError
from test_cli import invoke

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


def test_entry_point_plugin_is_listed_and_loadable(plugin, tmp_path, monkeypatch):
    _, ckpt = plugin
    write_dist_info(tmp_path / "site", "cosine = mylab_adapter:CosineAdapter")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert "cosine" in available_adapters()
    assert "cosine" in invoke("adapters").stdout
    assert get_adapter("cosine").load(str(ckpt)).info.num_classes == 3


def test_broken_plugin_gets_a_clear_error(tmp_path, monkeypatch):
    write_dist_info(tmp_path / "site", "broken = no_such_module_here:Adapter")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(AdapterError, match="cannot load plugin adapter 'broken'"):
        get_adapter("broken")
    with pytest.raises(AdapterError, match="not a protobench.models.adapter.PrototypeAdapter"):
        get_adapter("json:dumps")
