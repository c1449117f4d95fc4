"""Deformable ProtoPNet (Donnelly et al., "Deformable ProtoPNet: An Interpretable Image Classifier
Using Deformable Prototypes", CVPR 2022), reimplemented from its formulas.

Origin: github.com/jdonnelly36/Deformable-ProtoPNet (MIT). The original pickles the whole model
as `model.PPNet`, ProtoPNet's class name, and computes its similarity with a CUDA-only op; this
is the same arithmetic in pure torch. Each prototype has k x k parts (k = 2) that move with
offsets computed from the image:

    z = add_on(features(x))                          (B, D, H, W); the original's 'upsample': x2 bilinear
    x_n = L [z; e; e] / sqrt(|[z; e; e]|^2 + e) / k  per location: 2 channels of e = 1e-4, L = 64
    p_n = [p; e; e] / (sqrt(|[p; e; e]|^2 + e) + e) / k      per part (i, j)
    (dy, dx) = conv_offset(x_n)[2 (i k + j) + (0, 1)]        (B, 2 k k, H, W)
    s(h, w, i, j) = sqrt(bilinear(x_n^2) at (h - pad + dil i + dy, w - pad + dil j + dx))
                    the squared map is interpolated (norm-preserving); 0 outside the map
    A = relu(sum_ij <p_n[:, :, i, j], s(h, w, i, j)> / (1.01 L))   (B, P, H, W), a cosine below 0.99
    logits = last_layer(max_hw A)                    no bias: the margin-free logits its evaluation uses
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protobench.adapters.protopnet import add_on_layers, backbone_classes, class_identity, default_class_identity, \
    infer_add_on
from protobench.checkpoints.limits import short
from protobench.checkpoints.loading import Checkpoint
from protobench.checkpoints.pickles import class_name
from protobench.core.precision import full_precision
from protobench.errors import CheckpointError
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, FamilyFacts, ModelInfo
from protobench.models.backbones import build_backbone
from protobench.models.families import FAMILIES
from protobench.models.config import count, flag, positive
from protobench.models.family_adapter import FamilyAdapter, seeded, take_options
from protobench.models.infer import backbone_from, sub_state

UPSAMPLE = "torch.nn.modules.upsampling.Upsample"


@dataclass
class DeformableConfig:
    backbone: str = "resnet50"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 200
    num_prototypes: int = 1200
    prototype_dim: int = 2048  # D: the backbone's width (the 'upsample' add-on has no weights)
    prototype_size: int = 2  # k: each prototype has k x k parts
    add_on: str = "upsample"  # 'upsample' (x2 bilinear), 'identity', or ProtoPNet's 'regular' / 'bottleneck'
    hidden_channels: int = 128  # conv_offset's hidden width; 0: a single conv
    deform: bool = True  # the original's using_deform; False: a plain conv, no padding or dilation
    dilation: int = 2  # the parts' spacing (prototype_dilation)
    padding: int = 1  # prototype_padding
    vector_length: float = 64.0  # L, the length of each normalized latent vector (input_vector_length)
    eps_channels: int = 2  # constant channels of value epsilon appended to latents and prototypes
    epsilon: float = 1e-4
    relu_on_cos: bool = True
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def latent_layers(kind: str, in_ch: int, dim: int) -> nn.Module:
    if kind == "upsample":
        return nn.Upsample(scale_factor=2, mode="bilinear")
    if kind == "identity":
        return nn.Sequential(nn.Identity())
    return add_on_layers(kind, in_ch, dim)


def offset_layers(in_ch: int, hidden: int, k: int) -> nn.Sequential:
    """The original's conv_offset: (B, D + eps, H, W) -> (B, 2 k k, H, W) for its padding of 1."""
    if not hidden:
        return nn.Sequential(nn.Conv2d(in_ch, 2 * k * k, k + 1, padding=1, bias=False))
    return nn.Sequential(nn.Conv2d(in_ch, hidden, k + 2, padding=1), nn.ReLU(),
                         nn.Conv2d(hidden, 2 * k * k, k, padding=1))


def _sqrt0(v: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite gradient where v = 0 (a sample outside the map): exactly 0 there."""
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def norm_preserving_deform_dot(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, padding: int,
                               dilation: int) -> torch.Tensor:
    """The original's NormPreserveDeformConvFunction (stride 1, zero padding, no bias), batched.

    x (B, C, H, W), offset (B, 2 kh kw, Ho, Wo) as (dy, dx) per part, weight (P, C, kh, kw) -> (B, P, Ho, Wo):
    the dot of each prototype with the square root of x^2 bilinearly sampled at each part's moved position.
    """
    b, c, h, w = x.shape
    p, _, kh, kw = weight.shape
    ho, wo = h + 2 * padding - dilation * (kh - 1), w + 2 * padding - dilation * (kw - 1)
    if tuple(offset.shape) != (b, 2 * kh * kw, ho, wo):
        raise RuntimeError(f"the offsets have shape {tuple(offset.shape)}, not {(b, 2 * kh * kw, ho, wo)}")
    parts = offset.view(b, kh * kw, 2, ho, wo)
    grid_y = (torch.arange(ho, device=x.device, dtype=x.dtype) - padding).view(1, 1, ho, 1)
    grid_x = (torch.arange(wo, device=x.device, dtype=x.dtype) - padding).view(1, 1, 1, wo)
    part_y = (torch.arange(kh, device=x.device, dtype=x.dtype) * dilation).repeat_interleave(kw).view(1, -1, 1, 1)
    part_x = (torch.arange(kw, device=x.device, dtype=x.dtype) * dilation).repeat(kh).view(1, -1, 1, 1)
    y = grid_y + part_y + parts[:, :, 0]  # (B, K, Ho, Wo) sample rows, in pixels
    xs = grid_x + part_x + parts[:, :, 1]
    # grid_sample's own coordinates (align_corners=False): pixel i's centre is at (2 i + 1) / size - 1;
    # its bilinear weights and zero corners outside the map are the CUDA kernel's
    grid = torch.stack(((2 * xs + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1).view(b, kh * kw * ho, wo, 2)
    sampled = F.grid_sample(x * x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    columns = _sqrt0(sampled).view(b, c, kh * kw, ho, wo)
    return torch.einsum("bckhw,pck->bphw", columns, weight.reshape(p, c, kh * kw))


class DeformableProtoPNet(nn.Module):
    def __init__(self, cfg: DeformableConfig, identity: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        k = cfg.prototype_size
        self.features = build_backbone(cfg.backbone, **dict(cfg.backbone_kwargs))
        self.add_on_layers = latent_layers(cfg.add_on, self.features.out_channels, cfg.prototype_dim)
        shape = (cfg.num_prototypes, cfg.prototype_dim, k, k)
        self.prototype_vectors = nn.Parameter(torch.rand(shape))
        self.register_buffer("ones", torch.ones(shape))  # unused; kept so the original's state dict loads
        self.conv_offset = offset_layers(cfg.prototype_dim + cfg.eps_channels, cfg.hidden_channels, k)
        self.last_layer = nn.Linear(cfg.num_prototypes, cfg.num_classes, bias=False)
        if identity is None:
            identity = default_class_identity(cfg.num_prototypes, cfg.num_classes)
        self.register_buffer("prototype_class_identity", identity.float())

    def _with_epsilon(self, t: torch.Tensor) -> torch.Tensor:
        pad = torch.full((t.shape[0], self.cfg.eps_channels, *t.shape[2:]), self.cfg.epsilon, device=t.device,
                         dtype=t.dtype)
        return torch.cat((t, pad), dim=1)

    def activations(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, H, W) -> the margin-free cosine maps (B, P, H', W')."""
        cfg, eps, k = self.cfg, self.cfg.epsilon, self.cfg.prototype_size
        z = self._with_epsilon(z)
        x_n = cfg.vector_length * z / torch.sqrt((z**2).sum(dim=1, keepdim=True) + eps) / k
        p = self._with_epsilon(self.prototype_vectors)
        p_n = p / (torch.sqrt((p**2).sum(dim=1, keepdim=True) + eps) + eps) / k
        if cfg.deform:
            dot = norm_preserving_deform_dot(x_n, self.conv_offset(x_n), p_n, cfg.padding, cfg.dilation)
        else:
            dot = F.conv2d(x_n, p_n)
        cosine = dot / (cfg.vector_length * 1.01)
        return torch.relu(cosine) if cfg.relu_on_cos else cosine

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.add_on_layers(self.features(x))
        with full_precision(z):
            maps = self.activations(z.float())
        return maps, self.last_layer(maps.amax(dim=(2, 3)))


def _pair(root: dict[str, Any], name: str, default: int, path: str) -> Any:
    """A pickled (n, n) attribute as n; the original only ever uses equal pairs."""
    value = root.get(name, (default, default))
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        return value[0]  # its type and range are checked with the rest of the config
    raise CheckpointError(f"{path}: {name} {short(value)} is not a pair of equal numbers, as the original uses")


def _add_on_kind(pickled: Any, weights: dict[str, torch.Tensor], dim: int, option: str | None, path: str) -> str:
    if option is not None:
        return option
    if weights:  # ProtoPNet's conv add-ons, which the original also offers
        return infer_add_on(weights, dim)
    if pickled is None:  # a state dict: the original's setting for every backbone
        return "upsample"
    if class_name(pickled) == UPSAMPLE:
        up = pickled.__dict__
        if up.get("scale_factor") in (2, 2.0, (2.0, 2.0)) and up.get("mode") == "bilinear" \
                and not up.get("align_corners") and up.get("size") is None:
            return "upsample"
        raise CheckpointError(f"{path}: its add_on_layers upsample with scale {short(up.get('scale_factor'))} and mode "
                              f"{short(up.get('mode'))}; the original's x2 bilinear upsample is the one supported")
    return "identity"  # nn.Sequential(nn.Identity()): no weights, no Upsample


@FAMILIES.register("deformable")
class DeformableAdapter(FamilyAdapter):
    """Deformable ProtoPNet: k x k-part prototypes with learned offsets, norm-preserving cosine maps."""

    facts = FamilyFacts(
        display_name="Deformable ProtoPNet", paper="Donnelly et al., CVPR 2022",
        origin="https://github.com/jdonnelly36/Deformable-ProtoPNet", commit="92d3ab6",
        license="MIT, (c) 2022 Jon Donnelly, Alina Jade Barnett, Chaofan Chen",
        files="whole pickle `torch.save(model)` of `model.PPNet` with `conv_offset` (`{epoch}push{acc}.pth`), "
              "or its state dict",
        root_classes=("model.PPNet",), pickled_classes=backbone_classes(""), refines=("protopnet", "tesnet"))

    @classmethod
    def claims_pickle(cls, attributes: dict[str, Any], keys: frozenset[str]) -> bool:
        return cls.claims_keys(keys)  # ProtoPNet's class name, plus the offset network

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:
        return {"prototype_vectors", "last_layer.weight", "conv_offset.0.weight"} <= keys

    config_class = DeformableConfig
    config_rules = {"deform": flag, "relu_on_cos": flag, "vector_length": positive(),
                    "hidden_channels": count(0, "MAX_CHANNELS"),
                    "eps_channels": count(0, 16), "dilation": count(1, "MAX_PROTOTYPE_SIZE"),
                    "padding": count(0, "MAX_PROTOTYPE_SIZE")}
    model_class = DeformableProtoPNet
    options = {"img_size": None, "add_on": None}  # add_on: for state dicts, which cannot tell an upsample

    def __init__(self, model: DeformableProtoPNet):
        cfg = model.cfg
        info = ModelInfo(cfg.img_size, cfg.mean, cfg.std, cfg.num_classes, cfg.num_prototypes, "deformable-cosine")
        super().__init__(model, info, model.prototype_class_identity)

    @classmethod
    def build(cls, cfg: DeformableConfig, tensors: dict[str, torch.Tensor]) -> DeformableProtoPNet:
        return cls.model_class(cfg, identity=tensors.get("prototype_class_identity"))

    @classmethod
    def tiny(cls, seed: int = 0) -> DeformableAdapter:
        cfg = DeformableConfig(backbone="tinycnn", backbone_kwargs={"channels": [4, 8, 8]}, num_classes=3,
                               num_prototypes=6, prototype_dim=8, hidden_channels=4, img_size=32)
        with seeded(seed):
            model = DeformableProtoPNet(cfg)
            # the original starts at zero offsets; these move the parts by about 1.5 cells
            nn.init.normal_(model.conv_offset[0].weight, std=0.01)
            nn.init.normal_(model.conv_offset[2].weight, std=0.3)
            return cls(model)

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> DeformableAdapter:
        opts = take_options(cls.name, options, cls.options, cls.config_rules)
        t, path = ckpt.tensors, ckpt.path
        root = ckpt.root.__dict__ if ckpt.root is not None else {}
        modules = root.get("_modules") or {}
        if t["prototype_vectors"].dim() != 4:
            raise CheckpointError(f"{path}: prototype_vectors is not (P, D, k, k)")
        num_prototypes, dim, kh, kw = t["prototype_vectors"].shape
        if kh != kw:
            raise CheckpointError(f"{path}: {kh}x{kw} prototypes are not supported (square only)")
        backbone, kwargs = backbone_from(sub_state(t, "features."), modules.get("features"))
        if backbone == "vgg" and modules.get("features") is None:  # its VGG drops the final max-pool
            kwargs["cfg"] = kwargs["cfg"][:-1]  # the one infer_backbone assumes
        # values from the pickle go in unconverted: from_weights checks their types and ranges
        cfg = DeformableConfig(
            backbone=backbone, backbone_kwargs=kwargs, num_classes=int(t["last_layer.weight"].shape[0]),
            num_prototypes=int(num_prototypes), prototype_dim=int(dim), prototype_size=int(kh),
            add_on=_add_on_kind(modules.get("add_on_layers"), sub_state(t, "add_on_layers."), int(dim),
                                opts["add_on"], path),
            hidden_channels=int(t["conv_offset.0.weight"].shape[0]) if "conv_offset.2.weight" in t else 0,
            deform=root.get("using_deform", True), dilation=_pair(root, "prototype_dilation", 2, path),
            padding=_pair(root, "prototype_padding", 1, path), vector_length=root.get("input_vector_length", 64.0),
            eps_channels=root.get("n_eps_channels", 2), epsilon=root.get("epsilon_val", 1e-4),
            relu_on_cos=root.get("relu_on_cos", True), img_size=opts["img_size"] or root.get("img_size", 224))
        identity = class_identity(ckpt, cfg.num_prototypes, cfg.num_classes)
        return cls.from_weights(cfg, {**t, "prototype_class_identity": identity}, path, original=True)
