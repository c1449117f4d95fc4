"""ProtoViT (Ma et al., "Interpretable Image Classification with Adaptive Prototype-based Vision
Transformers", NeurIPS 2024), reimplemented from its formulas.

Origin: github.com/Henrymachiyu/ProtoViT (MIT). The original saves the whole model,
`torch.save(model)` of `model.PPNet` with a timm 0.4.12 DeiT or CaiT backbone; protobench
reads it through stand-ins (timm is never imported) into protobench.models.vit's
reimplementations, whose names are timm's. Each prototype p has K sub-prototypes p_k:

    t = the backbone's tokens after its final norm, the class token first
    z_n = t_n - t_cls                                   each of the N = h*w patch tokens, class token subtracted
    S[p, n, k] = <z_n / |z_n|, p_k / |p_k|>             cosine, (B, P, N, K)
    greedy matching, K times: the free (token n, sub-prototype k) with the largest S, n within
        Chebyshev distance `radius` on the h x w grid of the token picked just before (any n at first);
        v_k = that S, cell_k = that n
    s_k = sigmoid(temp * patch_select[p, k])            adaptive slots (0 or 1 after the original's push)
    a_p = sum_k v_k s_k K / (sum_k s_k + 1e-10)         the prototype's activation
    logits = last_layer(a)                              no bias

The activation is not the maximum of a map, so the adapter gives it beside the maps
(protobench.models.adapter.Evidence), with each sub-prototype's cosine map and the token it
matched. The map shown (and used by `--region box` and the pixel PLC) is, per token, the
largest cosine of the sub-prototypes the activation counts (slot >= 0.5; all of them if none is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protobench.checkpoints.limits import short
from protobench.checkpoints.loading import Checkpoint
from protobench.core.precision import full_precision
from protobench.errors import CheckpointError, OptionError
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, Evidence, FamilyFacts, ModelInfo
from protobench.models.backbones import build_backbone
from protobench.models.families import FAMILIES
from protobench.models.config import count, positive, sizes
from protobench.models.family_adapter import FamilyAdapter, seeded, take_options
from protobench.models.infer import backbone_from, sub_state

TIMM = "timm.models."  # timm 0.4.12's module paths, as ProtoViT's pickles name them
TIMM_CLASSES = (f"{TIMM}vision_transformer.VisionTransformer", f"{TIMM}vision_transformer.Block",
                f"{TIMM}vision_transformer.Attention", f"{TIMM}cait.Cait", f"{TIMM}cait.LayerScaleBlock",
                f"{TIMM}cait.LayerScaleBlockClassAttn", f"{TIMM}cait.TalkingHeadAttn", f"{TIMM}cait.ClassAttn",
                f"{TIMM}layers.mlp.Mlp", f"{TIMM}layers.patch_embed.PatchEmbed", f"{TIMM}layers.drop.DropPath")
SETTINGS = {"radius": 1, "temp": 100.0}  # ProtoViT's settings.py (radius, sig_temp), for bare state dicts
MASKED = -1e5  # what the original adds to the similarity of a (token, sub-prototype) pair that is not free


@dataclass
class ProtoViTConfig:
    backbone: str = "deit_small_patch16_224"  # a transformer in protobench.models.backbones.BACKBONES
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 200
    num_prototypes: int = 2000
    prototype_dim: int = 384  # D, the backbone's width
    num_parts: int = 4  # K sub-prototypes per prototype
    radius: int = 1  # adjacency of consecutive matched tokens (Chebyshev, in tokens)
    temp: float = 100.0  # slot sharpness (settings.py's sig_temp)
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def greedy_match(sim: torch.Tensor, grid: tuple[int, int], radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ProtoViT's greedy matching of K sub-prototypes to adjacent tokens, all images and prototypes at once.

    sim (B, P, N, K) -> values (B, P, K) and cells (B, P, K) long, indexed by sub-prototype. Pairs
    that are not free lose 1e5, as in the original (so with no free pair left it still picks one)."""
    b, p, n, k = sim.shape
    token = torch.arange(n, device=sim.device)
    rows, cols = token // grid[1], token % grid[1]
    near = ((rows[:, None] - rows).abs() <= radius) & ((cols[:, None] - cols).abs() <= radius)  # (N, N)
    lowered = sim + MASKED
    allowed = torch.ones(b, p, n, dtype=torch.bool, device=sim.device)  # free tokens near the last one picked
    taken = torch.zeros(b, p, n, dtype=torch.bool, device=sim.device)
    part_free = torch.ones(b, p, k, dtype=torch.bool, device=sim.device)
    values = sim.new_zeros(b, p, k)
    cells = torch.zeros(b, p, k, dtype=torch.long, device=sim.device)
    for _ in range(k):
        masked = torch.where(allowed[..., None] & part_free[:, :, None, :], sim, lowered)
        best, best_cell = masked.max(dim=2)  # (B, P, K): each sub-prototype's best token
        value, part = best.max(dim=2)  # (B, P): the best sub-prototype
        cell = best_cell.gather(2, part[..., None])  # (B, P, 1)
        values = values.scatter(2, part[..., None], value[..., None])
        cells = cells.scatter(2, part[..., None], cell)
        taken = taken.scatter(2, cell, True)
        part_free = part_free.scatter(2, part[..., None], False)
        allowed = near[cell[..., 0]] & ~taken
    return values, cells


class ProtoViT(nn.Module):
    def __init__(self, cfg: ProtoViTConfig, identity: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.features = build_backbone(cfg.backbone, **dict(cfg.backbone_kwargs))
        if not hasattr(self.features, "tokens"):
            raise ValueError(f"ProtoViT needs a transformer backbone (deit, cait), not {cfg.backbone}")
        shape = (cfg.num_prototypes, cfg.prototype_dim, cfg.num_parts)
        self.prototype_vectors = nn.Parameter(torch.rand(shape))
        self.patch_select = nn.Parameter(torch.full((1, cfg.num_prototypes, cfg.num_parts), 0.1))
        self.last_layer = nn.Linear(cfg.num_prototypes, cfg.num_classes, bias=False)
        if identity is None:
            from protobench.adapters.protopnet import default_class_identity

            identity = default_class_identity(cfg.num_prototypes, cfg.num_classes)
        self.register_buffer("prototype_class_identity", identity.float())

    def slots(self) -> torch.Tensor:
        """(P, K) each sub-prototype's slot s_k."""
        return torch.sigmoid(self.patch_select[0].float() * self.cfg.temp)

    def similarities(self, x: torch.Tensor) -> torch.Tensor:
        """S (B, P, N, K): cosine of every patch token (class token subtracted) to every sub-prototype."""
        tokens = self.features.tokens(x)
        z = tokens[:, self.features.num_prefix_tokens:] - tokens[:, :1]
        with full_precision(z):
            z = F.normalize(z.float(), dim=-1)
            prototypes = F.normalize(self.prototype_vectors.float(), dim=1)
            return torch.einsum("bnd,pdk->bpnk", z, prototypes)

    def evidence(self, x: torch.Tensor) -> Evidence:
        sim = self.similarities(x)
        b, p, _, k = sim.shape
        grid = self.features.grid_size
        with full_precision(sim):
            values, cells = greedy_match(sim, grid, self.cfg.radius)
            slots = self.slots()
            act = (values * (slots * k / (slots.sum(dim=-1, keepdim=True) + 1e-10))).sum(dim=-1)
            logits = self.last_layer(act)
        counted = slots >= 0.5
        counted = counted | ~counted.any(dim=-1, keepdim=True)  # (P, K)
        maps = sim.masked_fill(~counted[None, :, None, :], -torch.inf).amax(dim=-1).view(b, p, *grid)
        parts = sim.permute(0, 1, 3, 2).reshape(b, p, k, *grid)
        return Evidence(maps, logits, activations=act, parts=parts, cells=cells)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        found = self.evidence(x)
        return found.maps, found.logits

    def set_last_layer_incorrect_connection(self, strength: float = -0.5) -> None:
        identity_t = self.prototype_class_identity.t()
        self.last_layer.weight.data.copy_(identity_t + strength * (1 - identity_t))


def _pickled(root: Any, name: str, default: Any) -> Any:
    return default if root is None else root.__dict__.get(name, default)


def original_config(ckpt: Checkpoint, img_size: int | None, radius: int | None, temp: float | None
                    ) -> tuple[ProtoViTConfig, dict[str, torch.Tensor]]:
    """Architecture and the weights to load, from ProtoViT's pickle (or a bare state dict)."""
    t, root = ckpt.tensors, ckpt.root
    shape = tuple(t["prototype_vectors"].shape)
    if len(shape) != 3 or tuple(t["patch_select"].shape) != (1, shape[0], shape[2]):
        raise CheckpointError(f"{ckpt.path}: prototype_vectors {shape} and patch_select "
                              f"{tuple(t['patch_select'].shape)} are not ProtoViT's (P, D, K) and (1, P, K)")
    try:
        backbone, kwargs = backbone_from(sub_state(t, "features."), root)
    except CheckpointError as err:  # the backbone's reasons say what is wrong, not in which file
        raise CheckpointError(f"{ckpt.path}: {err}") from None
    own = kwargs["img_size"]
    if img_size is not None and img_size != own:  # the original never resizes its position embeddings
        side = own // kwargs["patch_size"]
        raise OptionError(f"adapter option img_size={img_size}: {ckpt.path} is a transformer for {own} px images "
                          f"(its {side} x {side} position embeddings); leave img_size out")
    arc = _pickled(root, "arc", {"deit": "deit", "cait": "cait"}.get(backbone))
    if backbone not in ("deit", "cait") or arc != backbone:
        raise CheckpointError(f"{ckpt.path}: ProtoViT's backbone must be a DeiT or CaiT transformer; this one is "
                              f"{backbone} (arc {short(arc)})")
    cfg = ProtoViTConfig(  # values from the pickle go in unconverted: from_weights checks their types and ranges
        backbone=backbone, backbone_kwargs=kwargs, num_classes=int(t["last_layer.weight"].shape[0]),
        num_prototypes=int(shape[0]), prototype_dim=int(shape[1]), num_parts=int(shape[2]),
        radius=radius if radius is not None else _pickled(root, "radius", SETTINGS["radius"]),
        temp=temp if temp is not None else _pickled(root, "temp", SETTINGS["temp"]),
        img_size=img_size or _pickled(root, "img_size", kwargs["img_size"]))
    identity = _pickled(root, "prototype_class_identity", None)
    if identity is None:  # a bare state dict: the allocation the original's constructor makes
        from protobench.adapters.protopnet import default_class_identity

        identity = default_class_identity(cfg.num_prototypes, cfg.num_classes)
    if not isinstance(identity, torch.Tensor) or tuple(identity.shape) != (cfg.num_prototypes, cfg.num_classes):
        raise CheckpointError(f"{ckpt.path}: prototype_class_identity does not have shape "
                              f"({cfg.num_prototypes}, {cfg.num_classes})")
    unused = ("ones", "features.head.weight", "features.head.bias")  # a constant; the deleted ImageNet head
    weights = {k: v for k, v in t.items() if k not in unused}
    return cfg, {**weights, "prototype_class_identity": identity.float()}


@FAMILIES.register("protovit")
class ProtoViTAdapter(FamilyAdapter):
    """ProtoViT with a DeiT or CaiT backbone: greedy-matched, slot-weighted cosine sub-prototypes."""

    facts = FamilyFacts(
        display_name="ProtoViT", paper="Ma et al., NeurIPS 2024", origin="https://github.com/Henrymachiyu/ProtoViT",
        commit="31f6378", license="MIT, (c) 2024 Henry",
        files="whole pickle `torch.save(model)` of `model.PPNet` with a timm 0.4.12 DeiT or CaiT backbone "
              "(`{epoch}finetuned{acc}.pth`, `{epoch}push{acc}.pth`), or its state dict",
        root_classes=("model.PPNet",), pickled_classes=TIMM_CLASSES, refines=("protopnet",))

    config_class = ProtoViTConfig
    config_rules = {"num_parts": sizes("MAX_SLOTS"), "temp": positive(),  # temp: a sigmoid's sharpness (part slots)
                    "radius": count(0, "MAX_IMG_SIZE")}  # how far apart, in tokens, consecutive matched parts may lie
    model_class = ProtoViT
    options = {"img_size": None, "radius": None, "temp": None}  # None: the pickle's, else settings.py's

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:
        """ProtoViT's signature: sub-prototypes with adaptive slots (`patch_select`), which no other family has."""
        return {"prototype_vectors", "patch_select", "last_layer.weight"} <= keys

    @classmethod
    def claims_pickle(cls, attributes: dict[str, Any], keys: frozenset[str]) -> bool:
        """ProtoPNet's class name, `model.PPNet`, with ProtoViT's slots (`patch_select`), which ProtoPNet has not."""
        return cls.claims_keys(keys)

    def __init__(self, model: ProtoViT):
        cfg = model.cfg
        info = ModelInfo(cfg.img_size, cfg.mean, cfg.std, cfg.num_classes, cfg.num_prototypes, "greedy-cosine")
        super().__init__(model, info, model.prototype_class_identity)

    def evidence(self, x: torch.Tensor) -> Evidence:
        return self.model.evidence(x)

    @classmethod
    def build(cls, cfg: ProtoViTConfig, tensors: dict[str, torch.Tensor]) -> ProtoViT:
        return cls.model_class(cfg, identity=tensors.get("prototype_class_identity"))

    @classmethod
    def tiny(cls, seed: int = 0) -> ProtoViTAdapter:
        """A 1-block DeiT of width 16 on 4 px patches: an 8 x 8 token grid at 32 px."""
        kwargs = {"img_size": 32, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_hidden": 32}
        cfg = ProtoViTConfig(backbone="deit", backbone_kwargs=kwargs, num_classes=3, num_prototypes=6,
                             prototype_dim=16, num_parts=4, img_size=32)
        with seeded(seed):
            model = ProtoViT(cfg)
            with torch.no_grad():
                model.patch_select.normal_(0.0, 0.02)  # slots on and off
            model.set_last_layer_incorrect_connection()
            return cls(model)

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> ProtoViTAdapter:
        cfg, weights = original_config(ckpt, **take_options(cls.name, options, cls.options, cls.config_rules))
        return cls.from_weights(cfg, weights, ckpt.path, original=True)
