"""ProtoViT's on-disk format for tests: `torch.save(model)` of `model.PPNet` holding a timm 0.4.12
DeiT (`timm.models.vision_transformer.VisionTransformer`) or CaiT (`timm.models.cait.Cait`).

The classes carry the attributes and submodules the original objects have (from the notes on
Henrymachiyu/ProtoViT and timm 0.4.12; no code copied), with tiny widths; tests.originals puts
them under the original import paths while a file is written. Their forward methods are the
slow, obvious reference: attention head by head, and the greedy matching as explicit loops over
images, prototypes, tokens and sub-prototypes.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbedW(nn.Module):
    def __init__(self, img_size, patch_size, dim):
        super().__init__()
        self.img_size, self.patch_size = (img_size, img_size), (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = True
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class MlpW(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act = nn.Linear(dim, hidden), nn.GELU()
        self.fc2, self.drop = nn.Linear(hidden, dim), nn.Dropout(0.0)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DropPathW(nn.Module):
    def __init__(self, drop_prob):
        super().__init__()
        self.drop_prob = drop_prob


def _heads(x, h, d):
    """Head h of a (B, N, H*d) projection: (B, N, d)."""
    return x[..., h * d:(h + 1) * d]


class AttentionW(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.attn_drop = nn.Linear(dim, 3 * dim), nn.Dropout(0.0)
        self.proj, self.proj_drop = nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, x):
        c = x.shape[-1]
        d = c // self.num_heads
        q, k, v = self.qkv(x).split(c, dim=-1)
        out = []
        for h in range(self.num_heads):
            weights = torch.softmax(_heads(q, h, d) @ _heads(k, h, d).transpose(1, 2) * self.scale, dim=-1)
            out.append(weights @ _heads(v, h, d))
        return self.proj(torch.cat(out, dim=-1))


class TalkingHeadAttnW(AttentionW):
    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.proj_l, self.proj_w = nn.Linear(heads, heads), nn.Linear(heads, heads)

    def forward(self, x):
        c = x.shape[-1]
        d, n = c // self.num_heads, self.num_heads
        q, k, v = self.qkv(x).split(c, dim=-1)
        logits = torch.stack([_heads(q, h, d) * self.scale @ _heads(k, h, d).transpose(1, 2) for h in range(n)], dim=1)
        mixed = torch.stack([sum(self.proj_l.weight[g, h] * logits[:, h] for h in range(n)) + self.proj_l.bias[g]
                             for g in range(n)], dim=1).softmax(dim=-1)
        weights = [sum(self.proj_w.weight[g, h] * mixed[:, h] for h in range(n)) + self.proj_w.bias[g]
                   for g in range(n)]
        return self.proj(torch.cat([weights[h] @ _heads(v, h, d) for h in range(n)], dim=-1))


class ClassAttnW(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_drop, self.proj, self.proj_drop = nn.Dropout(0.0), nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, u):
        d = u.shape[-1] // self.num_heads
        q, k, v = self.q(u[:, :1]) * self.scale, self.k(u), self.v(u)
        out = [torch.softmax(_heads(q, h, d) @ _heads(k, h, d).transpose(1, 2), dim=-1) @ _heads(v, h, d)
               for h in range(self.num_heads)]
        return self.proj(torch.cat(out, dim=-1))


class BlockW(nn.Module):
    def __init__(self, attn, mlp, dim, drop_path, eps=1e-6):
        super().__init__()
        self.norm1, self.attn, self.drop_path = nn.LayerNorm(dim, eps=eps), attn, drop_path
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=eps), mlp

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LayerScaleBlockW(BlockW):
    def __init__(self, attn, mlp, dim, drop_path, eps=1e-6):
        super().__init__(attn, mlp, dim, drop_path, eps)
        self.gamma_1, self.gamma_2 = nn.Parameter(torch.rand(dim) + 0.5), nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class LayerScaleBlockClassAttnW(LayerScaleBlockW):
    def forward(self, x, cls):
        cls = cls + self.gamma_1 * self.attn(self.norm1(torch.cat([cls, x], dim=1)))
        return cls + self.gamma_2 * self.mlp(self.norm2(cls))


class VisionTransformerW(nn.Module):
    """timm 0.4.12's VisionTransformer as DeiT builds it, after ProtoViT's `del model.head`."""

    def __init__(self, m, img_size, patch_size, dim, depth, heads):
        super().__init__()
        self.num_classes, self.num_features, self.embed_dim, self.num_tokens = 200, dim, dim, 1
        self.patch_embed = m.PatchEmbed(img_size, patch_size, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dist_token = None
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, dim) * 0.5)
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.Sequential(*[_block(m, m.Block, m.Attention(dim, heads), dim, i) for i in range(depth)])
        self.norm, self.pre_logits, self.head_dist = nn.LayerNorm(dim, eps=1e-6), nn.Identity(), None
        self.default_cfg = {"url": "", "num_classes": 1000, "input_size": (3, 224, 224)}

    def tokens(self, x):
        t = torch.cat([self.cls_token.expand(len(x), -1, -1), self.patch_embed(x)], dim=1) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        return self.norm(t)


class CaitW(nn.Module):
    """timm 0.4.12's Cait after `del model.head`: no class slot in pos_embed."""

    def __init__(self, m, img_size, patch_size, dim, depth, heads):
        super().__init__()
        self.num_classes, self.num_features, self.embed_dim = 1000, dim, dim
        self.patch_embed = m.PatchEmbed(img_size, patch_size, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches, dim) * 0.5)
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList(_block(m, m.LayerScaleBlock, m.TalkingHeadAttn(dim, heads), dim, 1)
                                    for _ in range(depth))
        self.blocks_token_only = nn.ModuleList(_block(m, m.LayerScaleBlockClassAttn, m.ClassAttn(dim, heads), dim, 0)
                                               for _ in range(2))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.feature_info = [{"num_chs": dim, "reduction": 0, "module": "head"}]
        self.default_cfg = {"url": "", "num_classes": 1000}

    def tokens(self, x):
        t = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        cls = self.cls_token.expand(len(x), -1, -1)
        for block in self.blocks_token_only:
            cls = block(t, cls)
        return self.norm(torch.cat([cls, t], dim=1))


def _block(m, kind, attn, dim, index):
    block = kind(attn, m.Mlp(dim, 4 * dim), dim, m.DropPath(0.1) if index else nn.Identity())
    with torch.no_grad():  # LayerNorms away from the identity, so a wrong epsilon or order would show
        for norm in (block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    return block


class ProtoViTPPNetW(nn.Module):
    """ProtoViT's model.PPNet: the attributes its constructor sets (settings.py's sig_temp=100, radius=1)."""

    def __init__(self, features, img_size, prototype_shape, num_classes, arc, temp=100, radius=1):
        super().__init__()
        self.img_size = img_size
        self.prototype_shape = prototype_shape
        self.num_prototypes, self.num_classes = prototype_shape[0], num_classes
        self.num_prototypes_per_class = self.num_prototypes // num_classes
        self.epsilon = 1e-4
        self.normalizer = nn.Softmax(dim=1)
        self.prototype_activation_function = "log"
        self.prototype_class_identity = torch.zeros(self.num_prototypes, num_classes)
        for j in range(self.num_prototypes):
            self.prototype_class_identity[j, j // self.num_prototypes_per_class] = 1
        self.features = features
        self.prototype_vectors = nn.Parameter(torch.rand(prototype_shape))
        self.radius = radius
        self.patch_select = nn.Parameter(torch.ones(1, prototype_shape[0], prototype_shape[-1]) * 0.1)
        self.temp = temp
        self.ones = nn.Parameter(torch.ones(prototype_shape), requires_grad=False)
        self.last_layer = nn.Linear(self.num_prototypes, num_classes, bias=False)
        self.arc = arc

    def similarities(self, x):
        """S[b, p, n, k]: cosine of patch token n (class token subtracted) and sub-prototype k, one at a time."""
        t = self.features.tokens(x)
        z = t[:, 1:] - t[:, :1]
        p, _, k = self.prototype_vectors.shape
        sim = torch.zeros(len(x), p, z.shape[1], k)
        for b in range(len(x)):
            for j in range(p):
                for part in range(k):
                    proto = self.prototype_vectors[j, :, part]
                    sim[b, j, :, part] = (z[b] @ proto) / (z[b].norm(dim=1) * proto.norm())
        return sim

    def slow(self, x):
        """(logits, activations, values, tokens, S) by the formula, with explicit loops."""
        sim = self.similarities(x)
        b_count, p_count, n, k = sim.shape
        side = int(n ** 0.5)
        table = sim.tolist()  # plain floats: the loops below compare millions of them
        values, tokens = torch.zeros(b_count, p_count, k), torch.zeros(b_count, p_count, k, dtype=torch.long)
        for b in range(b_count):
            for j in range(p_count):
                used_tokens, used_parts, last = set(), set(), None
                for _ in range(k):
                    best = None
                    for part in range(k):  # the first (part, token) with the largest similarity wins ties
                        for t in range(n):
                            if part in used_parts or t in used_tokens:
                                continue
                            if last is not None and max(abs(t // side - last // side),
                                                        abs(t % side - last % side)) > self.radius:
                                continue
                            if best is None or table[b][j][t][part] > best[0]:
                                best = (table[b][j][t][part], t, part)
                    value, t, part = best
                    used_tokens.add(t)
                    used_parts.add(part)
                    last = t
                    values[b, j, part], tokens[b, j, part] = value, t
        slots = torch.sigmoid(self.patch_select[0] * self.temp)
        act = torch.zeros(b_count, p_count)
        for j in range(p_count):
            act[:, j] = sum(values[:, j, part] * slots[j, part] * k / (slots[j].sum() + 1e-10) for part in range(k))
        return act @ self.last_layer.weight.t(), act, values, tokens, sim


VIT_LAYOUT = {
    "model": {"PPNet": ProtoViTPPNetW},
    "timm.models.vision_transformer": {"VisionTransformer": VisionTransformerW, "Block": BlockW,
                                       "Attention": AttentionW},
    "timm.models.cait": {"Cait": CaitW, "LayerScaleBlock": LayerScaleBlockW,
                         "LayerScaleBlockClassAttn": LayerScaleBlockClassAttnW, "TalkingHeadAttn": TalkingHeadAttnW,
                         "ClassAttn": ClassAttnW},
    "timm.models.layers.mlp": {"Mlp": MlpW},
    "timm.models.layers.patch_embed": {"PatchEmbed": PatchEmbedW},
    "timm.models.layers.drop": {"DropPath": DropPathW},
}
