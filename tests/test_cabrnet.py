"""CaBRNet model directories: loaded without CaBRNet's code, with CaBRNet's own outputs.

tests/fixtures/cabrnet/ holds directories written by CaBRNet 1.2's save_checkpoint
(scripts/make_cabrnet_fixtures.py, random weights), each with the logits and similarity maps
CaBRNet computed on a seeded batch (expected.safetensors).
"""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from protobench.adapters._cabrnet_heads import HEADS
from protobench.errors import CheckpointError
from protobench.models.lookup import get_adapter

FIXTURES = Path(__file__).parent / "fixtures" / "cabrnet"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
yaml = pytest.importorskip("yaml")


def cabrnet_outputs(adapter, directory: Path) -> tuple[torch.Tensor, ...]:
    """(x, protobench's logits and maps, CaBRNet's logits and maps) on the recorded batch."""
    expected = load_file(str(directory / "expected.safetensors"))
    with torch.no_grad():
        maps, logits = adapter.forward(expected["x"])
    theirs = expected["maps"]
    head = adapter.model.classifier
    if adapter.model.cfg.head == "prototree":  # pruned prototypes are left out; log similarities shown as exp
        theirs = theirs[:, head.live]
        theirs = theirs.exp() if adapter.model.cfg.similarity_log else theirs
    return expected["x"], logits, maps, expected["logits"], theirs


@pytest.mark.parametrize("name", NAMES)
def test_a_cabrnet_directory_gives_cabrnets_logits_and_maps(name):
    adapter = get_adapter("auto").load(str(FIXTURES / name))
    assert adapter.name == "cabrnet"
    _, logits, maps, their_logits, their_maps = cabrnet_outputs(adapter, FIXTURES / name)
    torch.testing.assert_close(logits, their_logits, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(maps, their_maps, rtol=1e-5, atol=2e-5)
    assert adapter.info.input_size == 16 and adapter.info.mean == (0.5, 0.45, 0.4)  # from dataset.yml


def test_the_fixtures_cover_every_head_and_both_prunings():
    heads = {yaml.safe_load((FIXTURES / n / "model_arch.yml").read_text())["top_arch"]["name"].lower() for n in NAMES}
    assert heads == set(HEADS)
    assert {"prototree_pruned", "protopool_pruned"} <= set(NAMES)


def test_a_pruned_protopool_takes_its_prototype_count_from_the_tensors():
    arch = yaml.safe_load((FIXTURES / "protopool_pruned" / "model_arch.yml").read_text())
    adapter = get_adapter("cabrnet").load(str(FIXTURES / "protopool_pruned"))
    state = torch.load(FIXTURES / "protopool_pruned" / "model_state.pth", weights_only=True)
    assert arch["classifier"]["params"]["num_prototypes"] == 6
    assert adapter.info.num_prototypes == state["classifier.prototypes"].shape[0] == 3


def test_a_pruned_prototree_shows_only_the_prototypes_its_nodes_use():
    adapter = get_adapter("cabrnet").load(str(FIXTURES / "prototree_pruned"))
    state = torch.load(FIXTURES / "prototree_pruned" / "model_state.pth", weights_only=True)

    def used(node):
        return [] if node["module"] == "LeafNode" else node["proto_idxs"] + used(node["children"][0]) + \
            used(node["children"][1])

    live = sorted(used(state["_extra_state"]))
    assert adapter.model.classifier.live.tolist() == live and len(live) < state["classifier.prototypes"].shape[0]
    # identity: each live prototype links to the classes the leaves below its node decide
    assert adapter.prototype_class_identity.shape == (len(live), 3)
    assert bool((adapter.prototype_class_identity.sum(dim=1) >= 1).all())


def test_the_state_file_itself_is_read_with_the_yaml_beside_it():
    for name in ("protopnet", "prototree"):
        adapter = get_adapter("auto").load(str(FIXTURES / name / "model_state.pth"))
        _, logits, _, theirs, _ = cabrnet_outputs(adapter, FIXTURES / name)
        torch.testing.assert_close(logits, theirs, rtol=1e-5, atol=2e-5)


def test_converted_to_safetensors_it_computes_the_same(tmp_path):
    for name in ("prototree_pruned", "pipnet"):
        adapter = get_adapter("cabrnet").load(str(FIXTURES / name))
        adapter.save(str(tmp_path / f"{name}.safetensors"))
        again = get_adapter("auto").load(str(tmp_path / f"{name}.safetensors"))
        x = load_file(str(FIXTURES / name / "expected.safetensors"))["x"]
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(adapter.forward(x), again.forward(x)))


def copy_fixture(tmp_path: Path, name: str = "protopnet") -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


MARKER = "pb_cabrnet_marker"


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """A module that, if imported, writes a file: nothing protobench reads may import it."""
    (tmp_path / "mods").mkdir()
    hit = tmp_path / "imported"
    (tmp_path / "mods" / f"{MARKER}.py").write_text(f"open({str(hit)!r}, 'w').write('x')\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    yield hit
    assert not hit.exists() and MARKER not in sys.modules


def edit_arch(directory: Path, change) -> None:
    arch = yaml.safe_load((directory / "model_arch.yml").read_text())
    change(arch)
    (directory / "model_arch.yml").write_text(yaml.safe_dump(arch))


@pytest.mark.parametrize("change", [
    lambda a: a["top_arch"].update(module=MARKER),
    lambda a: a["classifier"].update(module=MARKER, name="Evil"),
    lambda a: a["similarity"].update(module=MARKER),
    lambda a: a["extractor"]["add_on"]["conv1"].update(type=f"{MARKER}.Evil"),
    lambda a: a["extractor"]["add_on"]["conv1"]["params"].update(dtype=f"__import__('{MARKER}')"),
    lambda a: a["classifier"]["params"].update(dtype=f"__import__('{MARKER}').Evil"),
    lambda a: a["extractor"]["backbone"].update(arch=MARKER),
    lambda a: a["extractor"]["backbone"].update(params={"norm_layer": f"{MARKER}.Evil"}),
], ids=["top_arch", "classifier", "similarity", "add_on type", "add_on dtype", "classifier dtype", "backbone",
        "backbone callable"])
def test_a_yaml_naming_code_is_refused_and_nothing_is_imported(tmp_path, marker, change):
    directory = copy_fixture(tmp_path)
    edit_arch(directory, change)
    with pytest.raises(CheckpointError, match="model_arch.yml|protobench never|not one of|does not know"):
        get_adapter("cabrnet").load(str(directory))


def test_a_dtype_where_protobench_reads_nothing_is_ignored_and_never_evaluated(tmp_path, marker):
    directory = copy_fixture(tmp_path)
    edit_arch(directory, lambda a: a["extractor"]["backbone"].update(dtype=f"__import__('{MARKER}')"))
    assert get_adapter("cabrnet").load(str(directory)).info.num_prototypes == 6


def test_state_pickle_is_never_read(tmp_path):
    directory = copy_fixture(tmp_path)
    hit = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(hit), "w"))

    (directory / "state.pickle").write_bytes(pickle.dumps(Trap()))
    get_adapter("auto").load(str(directory))
    assert not hit.exists()


def test_without_dataset_yml_it_assumes_imagenet_preprocessing_and_says_so(tmp_path):
    directory = copy_fixture(tmp_path)
    (directory / "dataset.yml").unlink()
    with pytest.warns(UserWarning, match="assumed 224 px"):
        adapter = get_adapter("cabrnet").load(str(directory))
    assert adapter.info.input_size == 224 and adapter.info.std == (0.229, 0.224, 0.225)


def test_missing_or_mismatched_files_get_one_line_errors(tmp_path):
    directory = copy_fixture(tmp_path)
    (directory / "model_arch.yml").unlink()
    with pytest.raises(CheckpointError, match="no model_arch.yml"):
        get_adapter("cabrnet").load(str(directory))
    other = copy_fixture(tmp_path, "prototree")
    shutil.copy(FIXTURES / "protopool" / "model_state.pth", other / "model_state.pth")
    with pytest.raises(CheckpointError, match="not a model of the architecture|without _extra_state|do not fit"):
        get_adapter("cabrnet").load(str(other))


def _fixture_script():
    spec = importlib.util.spec_from_file_location("make_cabrnet_fixtures",
                                                  Path(__file__).parents[1] / "scripts" / "make_cabrnet_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["protopnet_legacy", "protopnet", "prototree", "prototree_log", "protopool",
                                  "protopool_legacy", "pipnet"])
def test_parity_with_cabrnet_itself_on_larger_backbones(tmp_path, name):
    """Built and saved by the installed cabrnet package (deeper cuts of the backbones than the fixtures)."""
    pytest.importorskip("cabrnet")
    script = _fixture_script()
    for prune in (False, True) if name in ("prototree", "protopool") else (False,):
        directory = Path(script.make(name, script.architectures("small")[name], str(tmp_path), seed=7, prune=prune,
                                        img=64))
        adapter = get_adapter("auto").load(str(directory))
        _, logits, maps, their_logits, their_maps = cabrnet_outputs(adapter, directory)
        torch.testing.assert_close(logits, their_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(maps, their_maps, rtol=1e-4, atol=1e-4)
        adapter.set_distance("float32")  # CaBRNet's own float32 operations: its numbers, on the same machine
        _, logits32, maps32, _, _ = cabrnet_outputs(adapter, directory)
        assert torch.equal(logits32, their_logits) and torch.equal(maps32, their_maps)


def test_a_test_transform_protobench_cannot_reproduce_is_named(tmp_path):
    directory = copy_fixture(tmp_path)
    data = yaml.safe_load((directory / "dataset.yml").read_text())
    steps = data["test_set"]["params"]["transform"]
    steps["resize"]["params"]["size"] = 20  # an int: the shorter side
    data["test_set"]["params"]["transform"] = {"resize": steps["resize"],
                                               "crop": {"type": "CenterCrop", "params": {"size": 16}},
                                               "blur": {"type": "GaussianBlur", "params": {"kernel_size": 3}},
                                               **{k: v for k, v in steps.items() if k != "resize"}}
    (directory / "dataset.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.warns(UserWarning, match="shorter side.*GaussianBlur step.*squashes the whole image to 16 px"):
        adapter = get_adapter("cabrnet").load(str(directory))
    assert adapter.info.input_size == 16 and adapter.info.std == (0.25, 0.2, 0.22)
