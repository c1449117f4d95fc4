"""Write small CaBRNet model directories with CaBRNet's own save call, and CaBRNet's outputs on them.

Needs the `cabrnet` package (`pip install --no-deps cabrnet==1.2` and its light dependencies).
Each directory holds what `cabrnet.core.utils.save.save_checkpoint` writes (model_arch.yml,
model_state.pth, dataset.yml, state.pickle) plus `expected.safetensors`: a seeded input batch
and the logits and similarity maps CaBRNet computes for it. protobench's tests load the
directories without `cabrnet` and compare with those outputs.

    python scripts/make_cabrnet_fixtures.py tests/fixtures/cabrnet            # the committed tiny set
    python scripts/make_cabrnet_fixtures.py /tmp/cab --size small --img 64            # larger backbones

Weights are random (seeded); the backbones are cut early (`layer`) to keep the files small.
"""

from __future__ import annotations

import argparse
import copy
import os
from typing import Any

import torch

IMG = 16  # input side of the fixtures

# backbone (arch, source layer, postprocess) per size: "tiny" for the committed files
BACKBONES = {
    "tiny": {"resnet": ("resnet18", "maxpool"), "vgg": ("vgg11", "features.2"), "convnext": ("convnext_tiny", "features.0")},
    "small": {"resnet": ("resnet18", "layer2"), "vgg": ("vgg11", "features"), "convnext": ("convnext_tiny", "features.3")},
}


def add_on(channels: int, bias: bool = True, relu: bool = True) -> dict[str, Any]:
    layers: dict[str, Any] = {"init_mode": "PROTOPNET",
                              "conv1": {"type": "Conv2d", "params": {"out_channels": channels, "kernel_size": 1,
                                                                     "bias": bias}}}
    if relu:
        layers["act1"] = {"type": "ReLU"}
        layers["conv2"] = {"type": "Conv2d", "params": {"out_channels": channels, "kernel_size": 1, "bias": True}}
    layers["act2"] = {"type": "Sigmoid"}
    return layers


def extractor(size: str, kind: str, layers: dict[str, Any] | None, postprocess: dict | None = None) -> dict:
    arch, layer = BACKBONES[size][kind]
    backbone: dict[str, Any] = {"arch": arch, "layer": layer, "weights": "None"}
    if postprocess:
        backbone["postprocess"] = postprocess
    out: dict[str, Any] = {"backbone": backbone}
    if layers:
        out["add_on"] = layers
    return out


def architectures(size: str) -> dict[str, dict[str, Any]]:
    """model_arch.yml contents, one per CaBRNet architecture (and its legacy-compatible variants)."""
    top = {name: {"module": f"cabrnet.archs.{name.lower()}.model", "name": name}
           for name in ("ProtoPNet", "ProtoTree", "ProtoPool", "PIPNet")}

    def classifier(name: str, module: str, **params: Any) -> dict[str, Any]:
        return {"module": f"cabrnet.archs.{module}.decision", "name": name, "params": params}

    return {
        "protopnet_legacy": {"top_arch": top["ProtoPNet"], "extractor": extractor(size, "resnet", add_on(8)),
                             "similarity": {"name": "LegacyProtoPNetSimilarity"},
                             "classifier": classifier("ProtoPNetClassifier", "protopnet", num_classes=3,
                                                      num_proto_per_class=2, compatibility_mode=True)},
        "protopnet": {"top_arch": top["ProtoPNet"], "extractor": extractor(size, "vgg", add_on(6)),
                      "similarity": {"name": "ProtoPNetSimilarity", "params": {"stability_factor": 0.001}},
                      "classifier": classifier("ProtoPNetClassifier", "protopnet", num_classes=3,
                                               num_proto_per_class=2)},
        "prototree": {"top_arch": top["ProtoTree"], "extractor": extractor(size, "vgg", add_on(6, False, False)),
                      "similarity": {"name": "LegacyProtoTreeSimilarity"},
                      "classifier": classifier("ProtoTreeClassifier", "prototree", num_classes=3, depth=3,
                                               leaves_init_mode="NORMAL", log_probabilities=False)},
        "prototree_log": {"top_arch": top["ProtoTree"], "extractor": extractor(size, "resnet", add_on(6, False, False)),
                          "similarity": {"name": "ProtoTreeSimilarity"},
                          "classifier": classifier("ProtoTreeClassifier", "prototree", num_classes=3, depth=2,
                                                   leaves_init_mode="NORMAL", log_probabilities=True)},
        "protopool": {"top_arch": top["ProtoPool"], "extractor": extractor(size, "resnet", add_on(6, True, False)),
                      "similarity": {"name": "ProtoPNetSimilarity"},
                      "classifier": classifier("ProtoPoolClassifier", "protopool", num_classes=3, num_prototypes=6,
                                               num_slots_per_class=2)},
        "protopool_legacy": {"top_arch": top["ProtoPool"], "extractor": extractor(size, "vgg", add_on(6, True, False)),
                             "similarity": {"name": "LegacyProtoPNetSimilarity"},
                             "classifier": classifier("ProtoPoolClassifier", "protopool", num_classes=3,
                                                      num_prototypes=6, num_slots_per_class=2,
                                                      compatibility_mode=True)},
        "pipnet": {"top_arch": top["PIPNet"],
                   "extractor": extractor(size, "convnext", None, {"stride_divider": {"ratio": 2, "min_channels": 2}}),
                   "similarity": {"name": "None"},
                   "classifier": classifier("PIPNetClassifier", "pipnet", num_classes=3, use_bias=True)},
    }


def dataset_config(side: int) -> dict[str, Any]:
    transform = {"resize": {"type": "Resize", "params": {"size": [side, side]}}, "to_tensor": {"type": "ToTensor"},
                 "normalize": {"type": "Normalize", "params": {"mean": [0.5, 0.45, 0.4], "std": [0.25, 0.2, 0.22]}}}
    return {"test_set": {"module": "torchvision.datasets", "name": "ImageFolder",
                         "params": {"root": "data/test", "transform": transform}, "batch_size": 8, "shuffle": False}}


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every float parameter and buffer drawn afresh (so that batch norms and leaves are not trivial)."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.numel() == 0 or "summation_kernel" in name or "_eye" in name \
                    or "class_map" in name or "_root" in name:
                continue
            if "running_var" in name:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif "prototypes" in name:
                tensor.copy_(torch.rand(tensor.shape, generator=generator))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)


def outputs(model: Any, name: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """CaBRNet's logits (log-probabilities for ProtoTree) and similarity maps for x."""
    with torch.no_grad():
        out = model(x)
        features = model.extractor(x)
        maps = model.classifier.similarities(features)
    if name.startswith("prototree"):
        logits = out[0] if model.classifier.log_probabilities else torch.log(out[0])
    elif name.startswith("pipnet"):
        logits = out[2]
    else:
        logits = out[0]
    return {"x": x, "logits": logits.contiguous(), "maps": maps.contiguous()}


def make(name: str, arch: dict[str, Any], out_dir: str, seed: int, prune: bool = False, img: int = IMG) -> str:
    from safetensors.torch import save_file

    from cabrnet.archs.generic.model import CaBRNet
    from cabrnet.core.utils.save import save_checkpoint

    torch.manual_seed(seed)
    model = CaBRNet.build_from_config(copy.deepcopy(arch))
    generator = torch.Generator().manual_seed(seed)
    randomize(model, generator)
    model.eval()
    if prune and name.startswith("prototree"):
        with torch.no_grad():  # confident leaves, but a uniform subtree (leaf_3, leaf_4) for pruning to cut
            for leaf in model.classifier.tree.leaves:
                leaf._relative_distribution.mul_(20 if leaf.node_id not in ("leaf_3", "leaf_4") else 0)
        model.prune(pruning_threshold=0.5)
    elif prune and name.startswith("protopool"):
        model.prune(device="cpu")
    directory = os.path.join(out_dir, name + ("_pruned" if prune else ""))
    save_checkpoint(directory, model, model_arch=arch, optimizer_mngr=None, training_config=None,
                    dataset_config=dataset_config(img), projection_info=None, epoch="final", seed=seed, device="cpu")
    x = torch.randn(2, 3, img, img, generator=generator)
    save_file(outputs(model, name, x), os.path.join(directory, "expected.safetensors"))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=sorted(BACKBONES), default="tiny")
    parser.add_argument("--img", type=int, default=IMG, help="input side (64 for --size small)")
    args = parser.parse_args()
    for index, (name, arch) in enumerate(architectures(args.size).items()):
        print(make(name, arch, args.out_dir, seed=index, img=args.img))
        if name in ("prototree", "protopool"):
            print(make(name, arch, args.out_dir, seed=index, prune=True, img=args.img))


if __name__ == "__main__":
    main()
