"""How far does the default float64 distance move each family from its original's float32 arithmetic?

For every registered family: a model with random weights, its prototypes moved onto latent patches of
the images plus 1e-3 noise per channel (as after a push, where |z|^2 - 2 z.p + |p|^2 cancels), 8 random
images; maps and logits with `--distance float64` (the default) against `--distance float32` (the
original's arithmetic), the top prototype (argmax of the activations) agreeing on how many images, and
the float64 maps against the original's own formula evaluated in float64.

The families whose original takes the expanded form (a `distance` attribute in their model) are built
at their papers' CUB sizes at 224 px: ProtoPNet and ProtoPShare (ResNet34, 2000 x 128 prototypes),
ProtoPool (ResNet50, 202 x 256), ProtoTree (ResNet50, depth 9, 256-channel prototypes). The other
families compute the same operations in both modes; for them the script runs their tiny models in both
modes to show the difference is 0.

    python benchmarks/distance_departure.py [--images 8] [--seed 0]     prints JSON (with the CPU it ran on)

`--smoke`: every family's tiny model, 2 images (checks that it runs; measures nothing).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from protobench.core.precision import machine
from protobench.models.families import FAMILIES
from protobench.models.lookup import get_adapter


def complete_tree(depth: int, seed: int) -> dict[str, torch.Tensor]:
    """A full ProtoTree of `depth`: branches and leaves numbered in preorder, prototypes in random order."""
    children, branch_index, leaf_index = [], [], []
    counter = iter(range(2 ** (depth + 1)))

    def build(level: int) -> int:  # >= 0 a branch's position, < 0 the leaf -1 - position
        index = next(counter)
        if level == depth:
            leaf_index.append(index)
            return -len(leaf_index)
        slot = len(children)
        children.append([0, 0])
        branch_index.append(index)
        children[slot] = [build(level + 1), build(level + 1)]
        return slot

    build(0)
    order = torch.randperm(len(children), generator=torch.Generator().manual_seed(seed))
    return {"branch_prototype": order, "branch_children": torch.tensor(children),
            "branch_index": torch.tensor(branch_index), "leaf_index": torch.tensor(leaf_index)}


def full_size(name: str, seed: int):
    """The family's model at its paper's CUB size, or None for the families without the expanded form."""
    torch.manual_seed(seed)
    if name in ("protopnet", "protopshare"):
        cls = get_adapter("protopnet")
        return cls.from_config(cls.config_class(), seed=seed)
    if name == "protopool":
        cls = get_adapter(name)
        return cls(cls.model_class(cls.config_class()))
    if name == "prototree":
        cls = get_adapter(name)
        model = cls.model_class(cls.config_class(num_prototypes=511), complete_tree(9, seed))
        torch.nn.init.normal_(model.leaf_dist_params, std=2.0)
        return cls(model)
    return None


def latent_and_prototypes(model, x):
    if hasattr(model, "prototype_layer"):
        return model._add_on(model._net(x)), model.prototype_layer.prototype_vectors
    return model.add_on_layers(model.features(x)), model.prototype_vectors


def push_like(model, x, seed: int, noise: float = 1e-3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z, p = latent_and_prototypes(model, x)
        cells = torch.randint(0, z.shape[0] * z.shape[2] * z.shape[3], (p.shape[0],), generator=gen)
        b, rest = cells // (z.shape[2] * z.shape[3]), cells % (z.shape[2] * z.shape[3])
        patches = z[b, :, rest // z.shape[3], rest % z.shape[3]]  # (P, D)
        p.copy_((patches + noise * torch.randn(patches.shape, generator=gen))[..., None, None])
        return z


def original_maps_float64(model, z: torch.Tensor) -> torch.Tensor:
    """The original's formula, in its operation order, evaluated in float64 (maps only)."""
    z = z.double()
    if hasattr(model, "prototype_layer"):
        p = model.prototype_layer.prototype_vectors.double()
        d2 = F.conv2d(z**2, torch.ones_like(p)) + (p**2).sum(dim=(1, 2, 3)).view(-1, 1, 1) - 2 * F.conv2d(z, p)
        return torch.exp(-torch.sqrt(d2.abs() + 1e-14))[:, model.branch_prototype]
    p = model.prototype_vectors.double()
    d = F.relu(F.conv2d(z**2, torch.ones_like(p)) + (-2 * F.conv2d(z, p) + (p**2).sum(dim=(1, 2, 3)).view(-1, 1, 1)))
    sim = torch.log((d + 1) / (d + 1e-4))
    if hasattr(model, "proto_presence"):
        sim = sim - torch.log((d.mean(dim=(2, 3)) + 1) / (d.mean(dim=(2, 3)) + 1e-4))[..., None, None]
    return sim


def top(adapter, x) -> torch.Tensor:
    return adapter.evidence(x).act.argmax(dim=1)


def measure(name: str, images: int, seed: int, smoke: bool = False) -> dict:
    adapter = None if smoke else full_size(name, seed)
    if adapter is None:  # no expanded form: the same code in both modes
        adapter = get_adapter(name).tiny(seed)
        size = adapter.info.input_size
        x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            maps64, logits64 = adapter.set_distance("float64")(x)
            maps32, logits32 = adapter.set_distance("float32")(x)
        return {"family": name, "model": f"tiny, {size} px", "expanded_form": False,
                "logits_max_diff": (logits64 - logits32).abs().max().item(),
                "maps_max_diff": (maps64 - maps32).abs().max().item()}
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    z = push_like(adapter.model, x, seed)
    with torch.no_grad():
        maps64, logits64 = adapter.set_distance("float64")(x)
        top64 = top(adapter, x)
        maps32, logits32 = adapter.set_distance("float32")(x)
        top32 = top(adapter, x)
        exact = original_maps_float64(adapter.model, z)
    return {"family": name, "model": "CUB size, 224 px", "expanded_form": True,
            "logits_max_abs": logits64.abs().max().item(), "logits_max_diff": (logits64 - logits32).abs().max().item(),
            "maps_max_diff": (maps64 - maps32).abs().max().item(),
            "same_top_prototype": f"{int((top64 == top32).sum())} of {images}",
            "float64_maps_vs_original_in_float64": (maps64.double() - exact).abs().max().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny models, 2 images: checks that it runs")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    images = 2 if args.smoke else args.images
    rows = [measure(name, images, args.seed, args.smoke) for name in FAMILIES.names()]
    print(json.dumps({"machine": machine(), "images": images, "seed": args.seed, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
