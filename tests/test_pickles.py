"""Safe loading: hostile pickles are refused before anything in them runs; damaged files are named as such."""

import argparse
import builtins
import os
import pickle

import pytest
import torch

from protobench.errors import CheckpointError
from protobench.checkpoints.loading import module_state, read_checkpoint
from protobench.checkpoints.pickles import StandIn, allowed_standin, standin_class
from protobench.models.families import pickled_classes


class SystemCall:
    """Unpickling this runs a shell command, under plain pickle."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class OpenFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return builtins.open, (str(self.target), "w")


@pytest.mark.parametrize("payload, save_kwargs", [
    (SystemCall, {}),  # zip file: listed by get_unsafe_globals_in_checkpoint, refused before loading
    (SystemCall, {"_use_new_zipfile_serialization": False}),  # pre-1.6 layout: the restricted unpickler refuses it
    (OpenFile, {}),
    (OpenFile, {"_use_new_zipfile_serialization": False}),
    (SystemCall, {"pickle_protocol": 4}),  # STACK_GLOBAL, which weights-only loading does not read
])
def test_hostile_payload_is_refused_and_never_runs(tmp_path, payload, save_kwargs):
    target = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "extra": payload(target)}, path, **save_kwargs)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_checkpoint(str(path))
    assert not target.exists()
    torch.load(path, weights_only=False)  # the control: unrestricted unpickling does run the payload
    assert target.exists()


def test_refusal_names_the_global(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(SystemCall(tmp_path / "x"), path)
    with pytest.raises(CheckpointError, match=r"posix\.system|nt\.system"):
        read_checkpoint(str(path))


def test_plain_pickle_of_a_tree_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "tree.pkl"  # ProtoTree's pickle.dump copy: its storages unpickle via torch.load(weights_only=False)
    with open(path, "wb") as f:
        pickle.dump({"w": torch.zeros(3)}, f, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match="model.pth"):
        read_checkpoint(str(path))


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_torch_files(tmp_path, legacy):
    whole = tmp_path / "whole.pth"
    torch.save({"model_state_dict": {"w": torch.arange(1000.0)}}, whole,
               _use_new_zipfile_serialization=not legacy)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        read_checkpoint(str(cut))


def test_state_dict_files_and_module_prefixes(tmp_path):
    path = tmp_path / "net_trained"
    torch.save({"model_state_dict": {"module.a.weight": torch.ones(2), "module.b": torch.zeros(1)},
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]},
                "args": argparse.Namespace(net="convnext_tiny_26", lr=0.05)}, path)  # kept as an inert stand-in
    ckpt = read_checkpoint(str(path))
    assert sorted(ckpt.tensors) == ["a.weight", "b"] and ckpt.root is None


def test_stand_ins_are_inert_and_keep_only_state():
    cls = standin_class("model.PPNet")
    assert cls is standin_class("model.PPNet") and cls.dotted == "model.PPNet"
    obj = cls("anything", key="is ignored")  # what a REDUCE on the class would do
    obj.__setstate__({"_parameters": {"w": torch.ones(2)}, "_modules": {}, "epsilon": 1e-4})
    assert obj.epsilon == 1e-4 and torch.equal(obj.w, torch.ones(2))
    assert list(module_state(obj)) == ["w"]
    with pytest.raises(AttributeError):
        obj.forward
    assert isinstance(obj, StandIn)


@pytest.mark.parametrize("name, allowed", [
    ("model.PPNet", True), ("features.resnet_features.Bottleneck", True), ("torch.nn.modules.conv.Conv2d", True),
    ("prototree.branch.Branch", True), ("posix.system", False), ("builtins.eval", False),
    ("torch.nn.modules.conv.F", False), ("model.evil", False), ("subprocess.Popen", False),
])
def test_allowlist(name, allowed):
    assert allowed_standin(name, pickled_classes()) is allowed


def test_the_allowlist_is_the_registered_families_classes():
    """Built from what each adapters/<family>.py declares: the same names the loader allowed when
    they were listed in protobench.checkpoints.pickles (written out here by hand)."""
    backbones = ["resnet_features.ResNet_features", "resnet_features.BasicBlock", "resnet_features.Bottleneck",
                 "vgg_features.VGG_features", "densenet_features.DenseNet_features", "densenet_features._DenseBlock",
                 "densenet_features._DenseLayer", "densenet_features._Transition"]
    expected = {prefix + name for prefix in ("", "models.", "features.", "protopool.") for name in backbones} | {
        "model.PPNet", "model.TESNet", "model.STProtoPNet", "model.PrototypeChooser",
        "protopool.model.PrototypeChooser",
        "prototree.prototree.ProtoTree", "pipnet.pipnet.PIPNet", "prototree.branch.Branch", "prototree.leaf.Leaf",
        "prototree.node.Node", "util.l2conv.L2Conv2D", "pipnet.pipnet.NonNegLinear"}
    expected |= {"timm.models." + name for name in (  # ProtoViT's backbones, as timm 0.4.12 names them
        "vision_transformer.VisionTransformer", "vision_transformer.Block", "vision_transformer.Attention",
        "cait.Cait", "cait.LayerScaleBlock", "cait.LayerScaleBlockClassAttn", "cait.TalkingHeadAttn", "cait.ClassAttn",
        "layers.mlp.Mlp", "layers.patch_embed.PatchEmbed", "layers.drop.DropPath")}
    assert pickled_classes() == expected
    assert not allowed_standin("model.PPNet")  # without the families' classes: torch.nn and generic values only
    assert allowed_standin("torch.nn.modules.conv.Conv2d") and allowed_standin("argparse.Namespace")


def test_unknown_weights_are_named(tmp_path):
    from protobench.models.lookup import get_adapter

    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="cannot tell which model family .*conv1.weight"):
        get_adapter("auto").load(str(path))
    with pytest.raises(CheckpointError, match="does not look like a PIP-Net checkpoint"):
        get_adapter("pipnet").load(str(path))
