"""Every built-in adapter: shapes, finite values, gradients to the input, save -> load, detection."""

import pytest
import torch

from protobench.models.families import FAMILIES
from protobench.models.lookup import get_adapter
from protobench.models.backbones import build_backbone
from protobench.checkpoints.formats import write_protobench
from protobench.models.convert import convert
from protobench.errors import AdapterError, CheckpointError
from protobench.models.infer import infer_backbone
from protobench.models.family_adapter import FamilyAdapter

BUILTIN = sorted(name for name, source in FAMILIES.sources().items() if source == "built-in")  # adapters/*.py


@pytest.mark.parametrize("name", BUILTIN)
def test_tiny_instance_contract(name):
    adapter = get_adapter(name).tiny(seed=0)
    assert isinstance(adapter, FamilyAdapter) and adapter.name == name
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    maps, logits = adapter(x)
    info = adapter.info
    assert maps.dim() == 4 and maps.shape[:2] == (2, info.num_prototypes)
    assert logits.shape == (2, info.num_classes)
    assert adapter.prototype_class_identity.shape == (info.num_prototypes, info.num_classes)
    assert (adapter.prototype_class_identity > 0).any(dim=0).all()  # every class owns some prototype
    assert torch.isfinite(maps).all() and torch.isfinite(logits).all()
    weights = torch.rand(maps.shape, generator=torch.Generator().manual_seed(1))  # PIP-Net's maps sum to 1
    (maps * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", BUILTIN)
def test_save_load_roundtrip(tmp_path, name):
    adapter = get_adapter(name).tiny(seed=1)
    path = tmp_path / "m.safetensors"
    adapter.save(str(path))
    for loader in (name, "auto"):
        loaded = get_adapter(loader).load(str(path))
        assert type(loaded) is type(adapter) and loaded.info == adapter.info
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            for a, b in zip(adapter(x), loaded(x)):
                assert torch.equal(a, b)
        assert torch.equal(loaded.prototype_class_identity, adapter.prototype_class_identity)
    result = convert(str(path), str(tmp_path / "again.safetensors"))  # protobench files convert too
    assert result["adapter"] == name and result["max_abs_diff"] == 0


def test_auto_names_a_missing_plugin(tmp_path):
    path = tmp_path / "m.safetensors"
    write_protobench(path, "mylab_cosine", {}, {"w": torch.zeros(1)})
    with pytest.raises(AdapterError, match="written by adapter 'mylab_cosine', which is not installed"):
        get_adapter("auto").load(str(path))


@pytest.mark.parametrize("name", BUILTIN)
def test_another_family_s_file_is_named(tmp_path, name):
    other = "prototree" if name != "prototree" else "pipnet"
    path = tmp_path / "m.safetensors"
    get_adapter(other).tiny().save(str(path))
    with pytest.raises(CheckpointError, match=f"holds a '{other}' model, not '{name}': run with --adapter {other}"):
        get_adapter(name).load(str(path))


def test_unknown_adapter_option(tmp_path):
    path = tmp_path / "m.safetensors"
    get_adapter("protopnet").tiny().save(str(path))
    with pytest.raises(AdapterError, match="has no option 'colour' .*activation, img_size"):
        get_adapter("auto").load(str(path), colour="red")


def test_every_module_of_adapters_is_a_family():
    """The contract tests run over every file in adapters/ (but its `_` helpers)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "adapters"
    assert BUILTIN == sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name, kwargs", [
    ("resnet", {"block": "bottleneck", "layers": [1, 2, 1, 1], "widths": [2, 4, 4, 8], "stem": 3,
                "strides": [1, 2, 2, 2]}),
    ("resnet", {"block": "basic", "layers": [2, 1, 1, 3], "widths": [4, 4, 8, 8], "stem": 4, "strides": [1, 2, 2, 1]}),
    ("vgg", {"cfg": [4, "M", 8, 8, "M", "M"], "batch_norm": True}),
    ("vgg", {"cfg": [4, 4, "M", 8, "M"], "batch_norm": False}),
    ("densenet", {"growth_rate": 4, "block_config": [1, 2, 1], "num_init_features": 6, "bn_size": 2}),
    ("convnext", {"widths": [4, 8, 8, 16], "depths": [1, 2, 1, 1]}),
    # one head per 64 channels is DeiT's rule (the pickle says otherwise); CaiT's heads are in its weights
    ("deit", {"img_size": 48, "patch_size": 8, "embed_dim": 128, "depth": 2, "num_heads": 2, "mlp_hidden": 40,
              "qkv_bias": False, "eps": 1e-6}),
    ("cait", {"img_size": 32, "patch_size": 4, "embed_dim": 12, "depth": 3, "num_heads": 3, "mlp_hidden": 24,
              "qkv_bias": True, "eps": 1e-6, "depth_token_only": 1, "mlp_hidden_token": 36}),
])
def test_backbone_architecture_is_read_back_from_its_weights(name, kwargs):
    net = build_backbone(name, **kwargs)
    modules = len(net.features) if name == "vgg" else None
    found, found_kwargs = infer_backbone(net.state_dict(), modules)
    # strides 1 in a stage without a shortcut conv are visible; the rest are the standard ones
    assert (found, found_kwargs) == (name, kwargs)


def test_standard_backbones_are_recognized():
    with torch.device("meta"):
        assert infer_backbone(build_backbone("resnet50").state_dict())[1]["layers"] == [3, 4, 6, 3]
        assert infer_backbone(build_backbone("densenet121").state_dict())[1]["block_config"] == [6, 12, 24, 16]
        assert infer_backbone(build_backbone("vgg16_bn").state_dict())[1]["cfg"] == [
            64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
        for name, heads in (("deit_tiny_patch16_224", 3), ("deit_small_patch16_224", 6), ("deit_base_patch16_224", 12),
                            ("cait_xxs24_224", 4)):
            found, kwargs = infer_backbone(build_backbone(name).state_dict())
            assert (found, kwargs["num_heads"], kwargs["img_size"], kwargs["patch_size"]) == (name[:4], heads, 224, 16)


@pytest.mark.parametrize("name", BUILTIN)
def test_benchmark_runs_on_every_family(tmp_path, name):
    from conftest import write_image_folder
    from protobench.core.protocol import EvalProtocol
    from protobench.run.evaluate import EvaluateConfig, evaluate

    path = tmp_path / "m.safetensors"
    get_adapter(name).tiny(seed=2).save(str(path))
    data = write_image_folder(tmp_path / "data", classes=3, per_class=1, size=32)
    cfg = EvaluateConfig(ckpt=str(path), data=data, out=str(tmp_path / "out"), adapter="auto",
                         protocol=EvalProtocol.make("default", steps=2, select="gt-protos"))
    summary = evaluate(cfg)["summary"]
    assert summary["images"] == 3 and all(summary[f"{m}_n"] == 3 for m in ("PAC", "PLC", "PRC"))


def test_the_supported_models_table_in_the_docs_is_what_the_families_declare():
    """docs/adapters.md's table and each adapters/<family>.py's FamilyFacts say the same."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "adapters.md").read_text()
    table = text.split("## Supported models")[1].split("\n\n")[1]
    rows = {}
    for line in table.splitlines()[2:]:
        name, family, origin, license_, files = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[name.strip("`")] = (family, origin, license_, files)
    assert sorted(rows) == BUILTIN
    for name, (family, origin, license_, files) in rows.items():
        facts = get_adapter(name).facts
        repo = re.sub(r"^https://github.com/", "", facts.origin)
        assert family == f"{facts.display_name} ({facts.paper})"
        assert origin == f"[{repo}]({facts.origin}) ({facts.commit})"
        assert (license_, files) == (facts.license, facts.files)


UNRULED: dict[str, str] = {}  # known gaps, each with why


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=UNRULED[n]))
                                  if n in UNRULED else n for n in BUILTIN])
def test_every_config_field_has_a_rule(name):
    """Each field of a family's config is checked: by a rule its own file declares (config_rules)
    or by a shared one (backbone_kwargs is checked against its backbone)."""
    from dataclasses import fields

    from protobench.models.config import field_problem

    cls = get_adapter(name)
    unruled = [f.name for f in fields(cls.config_class)
               if f.name != "backbone_kwargs" and field_problem(f.name, object(), cls.config_rules) is None]
    assert not unruled, f"{name}'s config fields without a rule: {unruled}"


def test_a_family_s_own_fields_are_ruled_by_its_file_only():
    from protobench.models.config import field_problem

    tree = get_adapter("prototree")
    assert field_problem("kontschieder", "yes", tree.config_rules) == "true or false"
    assert field_problem("kontschieder", "yes") is None  # no shared rule: another family may use the name otherwise
