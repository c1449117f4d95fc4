"""Tell a backbone's architecture from its state-dict keys and shapes.

Original checkpoints store weights, not the architecture's name. The key layout says
which kind of net it is (ResNet, VGG, DenseNet, ConvNeXt, DeiT, CaiT) and the shapes give
its depths and widths; the result feeds `protobench.models.backbones.build_backbone`. Strides,
a transformer's head count and its LayerNorm epsilon cannot be read from weights: the caller
supplies them, or the pickled backbone does, where a family changed them.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch

from protobench.errors import CheckpointError
from protobench.checkpoints.limits import limit, short


def sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _count(keys, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    if found and max(found) - min(found) + 1 != len(found):  # compared, never built: indices come from the file
        raise CheckpointError(f"backbone blocks are not numbered consecutively ({short(sorted(found))})")
    return len(found)


def _resnet(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    layers = [_count(state, rf"layer{i}\.(\d+)\.conv1\.weight$") for i in range(1, 5)]
    widths = [int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5)]
    # a stage without a shortcut conv keeps the resolution; one with it usually halves it
    strides = [s if f"layer{i}.0.downsample.0.weight" in state else 1 for i, s in zip(range(1, 5), (1, 2, 2, 2))]
    return {"block": block, "layers": layers, "widths": widths, "stem": int(state["conv1.weight"].shape[0]),
            "strides": strides}


def _vgg(state: Mapping[str, torch.Tensor], length: int | None) -> dict[str, Any]:
    convs = sorted(int(m.group(1)) for k, v in state.items()
                   if (m := re.match(r"features\.(\d+)\.weight$", k)) and v.dim() == 4)
    longest = 4 * limit("MAX_BLOCKS")  # conv, batch norm, relu and pool per layer at most
    if not convs or convs[-1] >= longest or (length is not None and length > longest):
        raise CheckpointError(f"the VGG backbone has no conv layers or more than {longest} modules")
    batch_norm = f"features.{convs[0] + 1}.running_mean" in state
    unit = 3 if batch_norm else 2  # conv (+ bn) + relu
    cfg: list[int | str] = []
    position = 0
    for index in convs:
        cfg += ["M"] * (index - position)  # each gap between conv units is one max-pool
        cfg.append(int(state[f"features.{index}.weight"].shape[0]))
        position = index + unit
    end = position + 1 if length is None else length  # every original config ends with a max-pool
    return {"cfg": cfg + ["M"] * (end - position), "batch_norm": batch_norm}


def _densenet(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    blocks = _count(state, r"features\.denseblock(\d+)\.denselayer1\.conv1\.weight$")
    block_config = [_count(state, rf"features\.denseblock{b}\.denselayer(\d+)\.conv1\.weight$")
                    for b in range(1, blocks + 1)]
    growth = int(state["features.denseblock1.denselayer1.conv2.weight"].shape[0])
    bottleneck = int(state["features.denseblock1.denselayer1.conv1.weight"].shape[0])
    return {"growth_rate": growth, "block_config": block_config,
            "num_init_features": int(state["features.conv0.weight"].shape[0]), "bn_size": bottleneck // growth}


def _convnext(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    stages = range(1, 8, 2)  # features.0 is the stem, 2/4/6 downsample, 1/3/5/7 hold the blocks
    depths = [_count(state, rf"features\.{s}\.(\d+)\.layer_scale$") for s in stages]
    widths = [int(state[f"features.{s}.0.block.0.weight"].shape[0]) for s in stages]
    return {"widths": widths, "depths": depths}


def _vit(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """DeiT (timm's VisionTransformer) or CaiT: widths, depths and the grid from the shapes.

    The head count is not in the weights: CaiT's talking-heads mixer (proj_l, H x H) tells it,
    DeiT's default is one head per 64 channels (DeiT-Ti 3, -S 6, -B 12); a pickle overrides it."""
    if "dist_token" in state:
        raise CheckpointError("its DeiT backbone is a distilled one (dist_token), which protobench does not "
                              "support; use a checkpoint with a plain DeiT or a CaiT backbone")
    cait = "blocks_token_only.0.attn.q.weight" in state
    dim = int(state["cls_token"].shape[-1])
    patch = state["patch_embed.proj.weight"].shape[-2:]
    tokens = int(state["pos_embed"].shape[1]) - (0 if cait else 1)  # CaiT has no class slot in pos_embed
    side = math.isqrt(max(tokens, 0))
    if patch[0] != patch[1] or side * side != tokens or tokens < 1:
        raise CheckpointError(f"the transformer's patches ({tuple(patch)}) or its {tokens} position embeddings "
                              "are not a square grid")
    kwargs: dict[str, Any] = {
        "img_size": side * int(patch[0]), "patch_size": int(patch[0]), "embed_dim": dim,
        "depth": _count(state, r"blocks\.(\d+)\.attn\.qkv\.weight$"),
        "num_heads": int(state["blocks.0.attn.proj_l.weight"].shape[0]) if cait else max(1, dim // 64),
        "mlp_hidden": int(state["blocks.0.mlp.fc1.weight"].shape[0]), "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "eps": 1e-6}  # timm's DeiT and CaiT
    if cait:
        kwargs["depth_token_only"] = _count(state, r"blocks_token_only\.(\d+)\.attn\.q\.weight$")
        kwargs["mlp_hidden_token"] = int(state["blocks_token_only.0.mlp.fc1.weight"].shape[0])
    return ("cait" if cait else "deit"), kwargs


def _pickled_vit(kwargs: dict[str, Any], pickled: Any) -> None:
    """A pickled transformer's head count (blocks.0.attn.num_heads) and LayerNorm epsilon (norm.eps)."""
    try:
        heads = pickled.blocks._modules["0"].attn.__dict__.get("num_heads")
    except (AttributeError, KeyError, TypeError):
        heads = None
    eps = getattr(getattr(pickled, "norm", None), "__dict__", {}).get("eps")
    if heads is not None:
        kwargs["num_heads"] = heads  # checked with the rest of the architecture before anything is built
    if eps is not None:
        kwargs["eps"] = eps


def infer_backbone(state: Mapping[str, torch.Tensor], vgg_length: int | None = None) -> tuple[str, dict[str, Any]]:
    """Backbone state dict (its own keys) -> (name, kwargs) for build_backbone.

    `vgg_length`: number of modules in a VGG's Sequential when the pickle tells it
    (otherwise one trailing max-pool is assumed, as in every original config).
    """
    try:
        if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
            return "resnet", _resnet(state)
        if "features.conv0.weight" in state:
            return "densenet", _densenet(state)
        if "features.1.0.layer_scale" in state:
            return "convnext", _convnext(state)
        if "features.0.weight" in state:
            return "vgg", _vgg(state, vgg_length)
        if "cls_token" in state and "blocks.0.attn.qkv.weight" in state:
            return _vit(state)
    except KeyError as err:
        raise CheckpointError(f"the backbone's weights are incomplete (no {err})") from None
    sample = ", ".join(sorted(state)[:3]) or "none"
    raise CheckpointError(f"cannot tell the backbone architecture from its weights (first keys: {sample}); "
                          "supported: ResNet, VGG, DenseNet, ConvNeXt, DeiT, CaiT")


def _pickled_strides(pickled: Any) -> list[int] | None:
    """A pickled ResNet backbone's stage strides (a family's copy may have changed them)."""
    try:
        return [int(getattr(pickled, f"layer{i}")._modules["0"].stride) for i in range(1, 5)]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def backbone_from(state: Mapping[str, torch.Tensor], pickled: Any = None,
                  strides: list[int] | None = None) -> tuple[str, dict[str, Any]]:
    """infer_backbone, refined by the pickled backbone object where there is one.

    `strides`: a ResNet's stage strides when the family fixes them; otherwise the
    pickled blocks' own strides, else the standard (1, 2, 2, 2) where a stage has a shortcut conv.
    """
    inner = getattr(pickled, "features", None) if pickled is not None else None
    modules = getattr(inner, "__dict__", {}).get("_modules")
    name, kwargs = infer_backbone(state, len(modules) if isinstance(modules, dict) else None)
    if name == "resnet":
        kwargs["strides"] = strides or (pickled is not None and _pickled_strides(pickled)) or kwargs["strides"]
    if name in ("deit", "cait") and inner is not None:
        _pickled_vit(kwargs, inner)
    return name, kwargs
