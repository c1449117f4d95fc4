"""Malformed checkpoints and paths: one CheckpointError (or AdapterError for a bad option) that
names what is wrong, never another exception. The limits quoted are docs' (protobench.checkpoints.limits)."""

import json
import os
import sys
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import write_image_folder
from originals import original_modules
from protobench.models.lookup import get_adapter
from protobench.adapters.prototree import ProtoTreeAdapter
from protobench.errors import AdapterError, CheckpointError
from protobench.checkpoints.loading import read_checkpoint
from test_cli import assert_one_line_error, invoke
from test_hostile_checkpoints import protobench_file, with_config


def load_error(path, adapter="auto", **options) -> str:
    with pytest.raises(CheckpointError) as info:
        get_adapter(adapter).load(str(path), **options)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- protobench metadata


@pytest.mark.parametrize("change, needle", [
    ({"num_prototypes": -6}, "num_prototypes -6 should be an integer in 1..100000"),
    ({"num_prototypes": "6"}, "num_prototypes '6' should be an integer"),
    ({"num_prototypes": 6.0}, "num_prototypes 6.0 should be an integer"),
    ({"num_prototypes": 10**12}, "num_prototypes 1000000000000 should be"),
    ({"num_classes": True}, "num_classes True should be an integer in 1..100000"),
    ({"num_classes": 0}, "num_classes 0 should be"),
    ({"img_size": "abc"}, "img_size 'abc' should be an integer in 8..2048"),
    ({"img_size": 0}, "img_size 0 should be an integer in 8..2048"),
    ({"img_size": 100_000}, "img_size 100000 should be"),
    ({"mean": [0.5, 0.5]}, "mean (0.5, 0.5) should be 3 numbers in [0, 1]"),
    ({"std": [0.0, 0.2, 0.2]}, "std (0.0, 0.2, 0.2) should be 3 numbers in [0.001, 10]"),
    ({"std": [float("nan"), 0.2, 0.2]}, "std (nan, 0.2, 0.2) should be"),
    ({"epsilon": -1.0}, "epsilon -1.0 should be a number in (0, 1]"),
    ({"activation": "relu"}, "activation 'relu' should be one of log, linear"),
    ({"add_on": 3}, "add_on 3 should be one of bottleneck"),
    ({"focal": "yes"}, "focal 'yes' should be true or false"),
    ({"prototype_size": 0}, "prototype_size 0 should be an integer in 1..32"),
    ({"backbone": "resnet9000"}, "backbone 'resnet9000' should be one of"),
    ({"backbone_kwargs": "abc"}, "backbone_kwargs of tinycnn: not a JSON object"),
    ({"backbone_kwargs": {"channels": [4, 8, 8], "evil": 1}}, "unknown argument 'evil'"),
    ({"backbone_kwargs": {"channels": [10**9]}}, "channels should be a list of 1 to 8 integers in 1..16384"),
    ({"backbone": "resnet", "backbone_kwargs": {"layers": [10**6] * 4}}, "layers should be a list of 4 integers"),
    ({"unknown_field": 1}, "unknown ProtoPNetConfig fields ['unknown_field']"),
])
def test_config_values_are_checked(tmp_path, change, needle):
    assert needle in load_error(with_config(tmp_path, **change))


@pytest.mark.parametrize("config, needle", [
    ([1, 2], "architecture metadata is a JSON list, not an object"),
    ('"abc"', "architecture metadata is a JSON str, not an object"),
    ("[" * 100_000 + "]" * 100_000, "architecture metadata is not valid JSON"),  # nested past the parser's limit
    ("{", "architecture metadata is not valid JSON"),
])
def test_config_that_is_not_an_object(tmp_path, config, needle):
    assert needle in load_error(protobench_file(tmp_path, config=config))


def test_img_size_zero_is_the_checkpoints_fault_in_the_cli(tmp_path):
    path = with_config(tmp_path, img_size=0)
    result = invoke("evaluate", "--ckpt", path, "--data", write_image_folder(tmp_path / "d"), "--out", tmp_path / "o")
    assert_one_line_error(result, "architecture in its metadata is invalid: img_size 0")


@pytest.mark.parametrize("option, needle", [
    ({"img_size": "abc"}, "adapter option img_size='abc' should be an integer in 8..2048"),
    ({"img_size": 4}, "adapter option img_size=4 should be"),
    ({"activation": 1}, "adapter option activation=1 should be one of log, linear"),
])
def test_adapter_options_are_checked(tmp_path, option, needle):
    with pytest.raises(AdapterError, match="adapter option"):
        get_adapter("auto").load(str(protobench_file(tmp_path)), **option)
    result = invoke("convert", protobench_file(tmp_path), tmp_path / "o.safetensors",
                    *[a for k, v in option.items() for a in ("--adapter-option", f"{k}={json.dumps(v)}")])
    assert_one_line_error(result, needle)


@pytest.mark.parametrize("real_probe_size", [64, 0])  # 8 px: a real forward pass checks it; 0: the meta device does
def test_img_size_too_small_for_the_backbone(tmp_path, monkeypatch, real_probe_size):
    # 8 px is within limits, but the tiny backbone's three 2x2 pools leave a 1x1 map: too small for 2x2 prototypes
    from protobench.adapters.protopnet import ProtoPNetConfig
    from protobench.models import family_adapter

    monkeypatch.setattr(family_adapter, "REAL_PROBE_SIZE", real_probe_size)

    cfg = ProtoPNetConfig(backbone="tinycnn", backbone_kwargs={"channels": [4, 8, 8]}, num_classes=3,
                          num_prototypes=6, prototype_dim=4, prototype_size=2, add_on="regular", img_size=32)
    path = tmp_path / "p2.safetensors"
    get_adapter("protopnet").from_config(cfg, seed=0).save(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    meta["config"] = json.dumps({**json.loads(meta["config"]), "img_size": 8})
    save_file(load_file(str(path)), str(path), metadata=meta)
    assert "cannot run on its own 8 px input" in load_error(path)


def tree_file(tmp_path, **changes):
    path = tmp_path / "tree.safetensors"
    ProtoTreeAdapter.tiny().save(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file({**load_file(str(path)), **changes}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("changes, needle", [
    ({"branch_children": torch.tensor([[1, 2], [0, -2], [-3, -4]])}, "not a binary tree"),  # a loop back to the root
    ({"branch_children": torch.tensor([[1, 1], [-1, -2], [-3, -4]])}, "not a binary tree"),  # branch 1 twice
    ({"branch_children": torch.tensor([[1, 2], [-1, -2], [-3, -9]])}, "not a binary tree"),  # no leaf 9
    ({"branch_prototype": torch.tensor([2, 0, 7])}, "prototypes outside 0..2"),
    ({"branch_children": torch.tensor([[1.0, 2.0], [-1.0, -2.0], [-3.0, -4.0]])}, "not integer tensors"),
])
def test_tree_structure_is_checked(tmp_path, changes, needle):
    assert needle in load_error(tree_file(tmp_path, **changes))


def test_nan_weights_are_refused(tmp_path):
    path = tmp_path / "nan.safetensors"
    adapter = get_adapter("protopnet").tiny()
    with torch.no_grad():
        adapter.model.prototype_vectors[0, 0] = float("nan")
    adapter.save(str(path))
    assert "prototype_vectors holds NaN or infinite values" in load_error(path)


# ---------------------------------------------------------------- original pickles


def ppnet_pickle(tmp_path, mutate):
    """A ProtoPNet whole-model pickle with `mutate(net)` applied before torch.save."""
    with original_modules(tmp_path / "src", "protopnet") as m:
        net = m.PPNet(m.VGG_features([4, "M", 8, "M"]), 8, (6, 4, 1, 1), 3).eval()
        mutate(net)
        path = tmp_path / "model.pth"
        torch.save(net, path)
    return path


def nested(depth):
    module = nn.ReLU()
    for _ in range(depth):
        module = nn.Sequential(module)
    return module


@pytest.mark.parametrize("mutate, needle", [
    (lambda n: setattr(n, "img_size", "abc"), "img_size 'abc' should be an integer in 8..2048"),
    (lambda n: setattr(n, "img_size", 0), "img_size 0 should be"),
    (lambda n: setattr(n, "img_size", 10**12), "img_size 1000000000000 should be"),
    (lambda n: setattr(n, "epsilon", float("nan")), "epsilon nan should be"),
    (lambda n: setattr(n, "focal_sim", "yes"), "focal 'yes' should be true or false"),
    (lambda n: setattr(n, "prototype_activation_function", 3), "prototype activation 3 is not supported"),
    (lambda n: setattr(n, "prototype_class_identity", [1, 2]), "prototype_class_identity does not have shape (6, 3)"),
    (lambda n: n.prototype_class_identity.fill_(float("nan")), "holds NaN"),
    (lambda n: n.features._modules.__setitem__("features", "conv"), "module features.features is a str, not a module"),
    (lambda n: n._parameters.__setitem__("prototype_vectors", [1.0, 2.0]), "prototype_vectors is a list, not a tensor"),
    (lambda n: n.__dict__.__setitem__("_modules", ["features"]), "_modules is a list, not a table of names"),
    (lambda n: n.add_on_layers._modules.__setitem__("loop", n), "the pickled module tree loops"),
    (lambda n: n.add_on_layers._modules.__setitem__("deep", nested(150)), "nested deeper than 100"),
])
def test_malformed_pickles(tmp_path, mutate, needle):
    assert needle in load_error(ppnet_pickle(tmp_path, mutate))


def test_tree_pickle_sharing_a_subtree(tmp_path):
    from test_originals import write_prototree

    directory, _ = write_prototree(tmp_path)
    with original_modules(tmp_path / "src2", "prototree") as m:
        features = m.ResNet_features(m.BasicBlock, [1, 1, 1, 1], strides=(1, 2, 1, 1))
        tree = m.ProtoTree(m, features, 8, num_classes=3, depth=2, dim=4)
        tree._root.r = tree._root.l  # the same subtree twice: a DAG, not a tree
        torch.save(tree, tmp_path / "dag.pth")
    assert "shares nodes" in load_error(tmp_path / "dag.pth")


def test_vgg_layer_numbers_from_the_file_are_bounded(tmp_path):
    path = tmp_path / "pool.pth"  # a ProtoPool state dict whose VGG claims a conv at index 10^9
    state = {"proto_presence": torch.zeros(3, 5, 2), "prototype_vectors": torch.zeros(5, 4, 1, 1),
             "ones": torch.ones(5, 4, 1, 1), "features.features.0.weight": torch.zeros(4, 3, 3, 3),
             "features.features.1000000000.weight": torch.zeros(8, 4, 3, 3)}
    torch.save({"model_state_dict": state}, path)
    assert "more than 512 modules" in load_error(path)


def test_big_endian_files_are_named_as_such(tmp_path):
    from hostile import dumps, torch_zip

    path = torch_zip(tmp_path / "m.pth", dumps({"w": 1}), byteorder="big")
    assert "written on a big-endian machine" in load_error(path)


# ---------------------------------------------------------------- paths that are not regular files


def test_named_pipe_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(pytest.raises(CheckpointError, read_checkpoint,
                                                                          str(fifo))), daemon=True)
    worker.start()
    worker.join(60)  # a guard against hanging forever, not a speed requirement
    assert not worker.is_alive(), "reading a named pipe blocked"
    assert "is a named pipe (FIFO), not a regular file" in str(outcome[0].value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /dev/null and symlinks")
@pytest.mark.parametrize("make, needle", [
    (lambda p: (os.symlink(p / "b", p / "a"), os.symlink(p / "a", p / "b")), "is a symbolic link loop"),
    (lambda p: os.symlink(p / "missing.pth", p / "a"), "is a broken symbolic link: it points to"),
    (lambda p: os.symlink("/dev/null", p / "a"), "is a character device, not a regular file"),
    (lambda p: (p / "a").mkdir(), "is a directory"),
])
def test_paths_that_are_not_files(tmp_path, make, needle):
    make(tmp_path)
    with pytest.raises(CheckpointError, match=needle):
        read_checkpoint(str(tmp_path / "a"))
    result = invoke("evaluate", "--ckpt", tmp_path / "a", "--data", write_image_folder(tmp_path / "d"),
                    "--out", tmp_path / "o")
    assert_one_line_error(result, needle.split(":")[0])
