"""CaBRNet's model_state.pth and dataset.yml: the weights, the tree, the test preprocessing.

model_state.pth is read with protobench's restricted unpickler (nothing in it can name code);
ProtoTree's `_extra_state` is the tree as nested plain values ({module: BinaryNode | LeafNode,
node_id, proto_idxs, children: [not similar, similar]}), each leaf's class logits stored under
the path of module names CaBRNet gives it (`classifier.tree.<parent id>_child_<nsim|sim>...`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from protobench.checkpoints.formats import describe_unreadable, open_checkpoint, sniff_bytes
from protobench.checkpoints.limits import limit, short
from protobench.checkpoints.pickles import load_pickle
from protobench.errors import CheckpointError, ProtobenchWarning
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD

PIXEL_FORMAT = ("ToTensor", "PILToTensor", "ConvertImageDtype", "convert_to_rgb")  # what protobench's decoding does
UNUSED = {  # CaBRNet tensors protobench does not need: constants, or what it derives from the others
    "protopnet": ("classifier.similarity_layer._summation_kernel",),
    "prototree": ("_eye", "classifier._root_prob", "classifier._root_greedy_path",
                  "classifier.similarity_layer._summation_kernel"),
    "protopool": ("classifier.similarity_layer._summation_kernel", "classifier.slot_class_map"),
    "pipnet": ("classifier.prototypes", "classifier.normalization_multiplier"),
}


def read_state(path: str) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors, ProtoTree's _extra_state or None) of a model_state.pth."""
    with open_checkpoint(path) as f:
        kind = sniff_bytes(f.read(64))
        if kind not in ("zip", "legacy"):
            raise CheckpointError(describe_unreadable(path, kind))
        f.seek(0)
        state = load_pickle(path, kind, f, ())
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not CaBRNet's state dict")
    extra = state.pop("_extra_state", None)
    wrong = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if wrong:
        raise CheckpointError(f"{path}: {short(wrong[0])} is not a tensor")
    return state, extra


def _need(tensors: dict[str, torch.Tensor], key: str, dims: int, path: str) -> torch.Tensor:
    value = tensors.get(key)
    if value is None or value.dim() != dims:
        raise CheckpointError(f"{path}: no {dims}-d {key} in the weights: not a model of the architecture its "
                              "model_arch.yml names")
    return value


def head_tensors(head: str, tensors: dict[str, torch.Tensor], extra: Any,
                 path: str) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """The sizes the tensors give, and the state dict of protobench's network."""
    state = {k: v for k, v in tensors.items() if k not in UNUSED[head]}
    if head == "pipnet":
        weight = _need(tensors, "classifier.last_layer.weight", 2, path)
        return {"num_classes": int(weight.shape[0]), "num_prototypes": int(weight.shape[1]),
                "num_features": int(weight.shape[1])}, state
    prototypes = _need(tensors, "classifier.prototypes", 4, path)
    if tuple(prototypes.shape[2:]) != (1, 1):
        raise CheckpointError(f"{path}: prototypes of shape {tuple(prototypes.shape)} are not 1x1")
    sizes = {"num_prototypes": int(prototypes.shape[0]), "num_features": int(prototypes.shape[1])}
    if head == "prototree":
        structure, leaves = flatten_tree(extra, state, path)
        state.update({f"classifier.{k}": v for k, v in structure.items()}, **{"classifier.leaves": leaves})
        return {**sizes, "num_classes": int(leaves.shape[1])}, state
    weight = _need(tensors, "classifier.last_layer.weight", 2, path)
    sizes["num_classes"] = int(weight.shape[0])
    if head == "protopool":
        slots = _need(tensors, "classifier.proto_slot_map", 3, path)
        sizes["num_slots"] = int(slots.shape[2])
    return sizes, state


def _node(node: Any, path: str) -> tuple[str, str]:
    if not isinstance(node, dict) or node.get("module") not in ("BinaryNode", "LeafNode") \
            or not isinstance(node.get("node_id"), str) or not 0 < len(node["node_id"]) <= 64:
        raise CheckpointError(f"{path}: the tree in _extra_state holds {short(node)}, not a BinaryNode or LeafNode")
    return node["module"], node["node_id"]


def flatten_tree(root: Any, state: dict[str, torch.Tensor], path: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Preorder walk of _extra_state -> ({branch_prototype, branch_children}, leaf logits (NL, C)); the leaf
    tensors are taken out of `state`."""
    if root is None:
        raise CheckpointError(f"{path}: a ProtoTree's model_state.pth without _extra_state (the tree) cannot be read")
    protos: list[int] = []
    children: list[list[int]] = []
    leaves: list[torch.Tensor] = []
    stack: list[tuple[Any, str, int, int]] = [(root, "classifier.tree", -1, 0)]  # node, module path, parent, side
    while stack:
        node, where, parent, side = stack.pop()
        kind, node_id = _node(node, path)
        if len(protos) + len(leaves) > 2 * limit("MAX_TREE_BRANCHES") + 1:
            raise CheckpointError(f"{path}: the tree has more than {limit('MAX_TREE_BRANCHES')} branches")
        if kind == "LeafNode":
            leaf = state.pop(f"{where}._relative_distribution", None)
            if leaf is None or leaf.dim() != 2 or leaf.shape[0] != 1:
                raise CheckpointError(f"{path}: no (1, C) class logits {short(where)}._relative_distribution")
            leaves.append(leaf[0])
            code = -len(leaves)
        else:
            index, pair = node.get("proto_idxs"), node.get("children")
            if not (isinstance(index, list) and len(index) == 1 and isinstance(index[0], int)
                    and not isinstance(index[0], bool) and isinstance(pair, list) and len(pair) == 2):
                raise CheckpointError(f"{path}: tree node {short(node_id)} has no single prototype and two children")
            protos.append(index[0])
            children.append([0, 0])
            code = len(children) - 1
            for turn, name in ((1, "sim"), (0, "nsim")):  # popped not-similar first: preorder
                stack.append((pair[turn], f"{where}.{node_id}_child_{name}", code, turn))
        if parent >= 0:
            children[parent][side] = code
    if not children or len({t.shape for t in leaves}) != 1:
        raise CheckpointError(f"{path}: the tree has no decision node, or leaves of different class counts")
    return {"branch_prototype": torch.tensor(protos), "branch_children": torch.tensor(children)}, torch.stack(leaves)


def check_tree(structure: dict[str, torch.Tensor], num_prototypes: int) -> None:
    """Refuse structure tensors that are not one binary tree rooted at branch 0 using prototypes 0..P-1."""
    protos, children = structure["branch_prototype"], structure["branch_children"]
    count = len(protos)
    if protos.dim() != 1 or tuple(children.shape) != (count, 2) or protos.is_floating_point() \
            or children.is_floating_point() or not 1 <= count <= limit("MAX_TREE_BRANCHES"):
        raise CheckpointError("the tree structure tensors are not 1..MAX_TREE_BRANCHES branches of integers")
    if int(protos.min()) < 0 or int(protos.max()) >= num_prototypes:
        raise CheckpointError(f"the tree names prototypes outside 0..{num_prototypes - 1}")
    codes = sorted(children.flatten().tolist())
    if codes != list(range(-count - 1, 0)) + list(range(1, count)):  # each node but the root has one parent
        raise CheckpointError("the tree structure is not a binary tree rooted at branch 0")
    seen, todo = 0, [0]
    while todo and seen <= count:
        seen += 1
        todo += [c for c in children[todo.pop()].tolist() if c >= 0]
    if seen != count:
        raise CheckpointError("the tree structure is not a binary tree rooted at branch 0")


def _steps(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    test = data.get("test_set") if isinstance(data.get("test_set"), dict) else {}
    params = test.get("params") if isinstance(test.get("params"), dict) else {}
    transform = params.get("transform") if isinstance(params.get("transform"), dict) else {}
    return [(str(s.get("type")), s.get("params") if isinstance(s.get("params"), dict) else {})
            for s in transform.values() if isinstance(s, dict)]


def _side(value: Any) -> int | None:
    if isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def test_preprocessing(path: Path) -> tuple[int, tuple, tuple]:
    """(input side, mean, std) from dataset.yml's test_set transform; ImageNet's 224 px without one."""
    from protobench.adapters._cabrnet_arch import read_yaml

    if not path.is_file():
        warnings.warn(f"no {path}: assumed 224 px inputs with ImageNet's normalization (pass --adapter-option "
                      "img_size=N if it differs)", ProtobenchWarning, stacklevel=3)
        return 224, IMAGENET_MEAN, IMAGENET_STD
    size, crop, mean, std, notes = None, None, IMAGENET_MEAN, IMAGENET_STD, []
    for kind, params in _steps(read_yaml(str(path))):
        if kind == "Resize":
            size = _side(params.get("size"))
            if isinstance(params.get("size"), int):
                notes.append("its Resize sets the shorter side (keeping the aspect ratio)")
        elif kind == "CenterCrop":
            crop = _side(params.get("size"))
        elif kind == "Normalize":
            mean, std = tuple(params.get("mean", mean)), tuple(params.get("std", std))
        elif kind not in PIXEL_FORMAT:
            notes.append(f"its {kind} step is not reproduced")
    if crop is not None:
        notes.append(f"protobench squashes the whole image to {crop} px instead of cropping its centre")
    if size is None and crop is None:
        notes.append("it resizes to no fixed side: protobench assumes 224 px (--adapter-option img_size=N)")
    if notes:
        warnings.warn(f"{path}: protobench resizes each test image to a square of the model's input side; "
                      + "; ".join(notes), ProtobenchWarning, stacklevel=3)
    return crop or size or 224, mean, std
