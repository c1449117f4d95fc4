"""Vision-transformer backbones, DeiT and CaiT, in plain torch from their formulas.

Module and parameter names are timm 0.4.12's (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.N.attn.qkv`, `blocks_token_only.N.attn.q`, `gamma_1`, `norm`, ...), so the original
state dicts load without renaming; timm itself is never imported (its pickled classes are read as
inert stand-ins, see protobench.checkpoints.pickles).

    DeiT:  t = [cls; E(x)] + pos;  t = Block^depth(t);  t = LN(t)
           Block: t + Attn(LN1 t), then t + MLP(LN2 t); Attn = multi-head softmax(q k^T / sqrt(d)) v
    CaiT:  t = E(x) + pos (no class slot);  t = LayerScaleBlock^depth(t)    (talking heads, gamma-scaled)
           c = ClassBlock^depth_token_only(t, cls) (only the class token attends);  LN([c; t])

`tokens(x)` gives all tokens after the final norm, the class token first (B, 1 + h*w, D);
`forward(x)` the patch tokens alone on their grid (B, D, h, w), row-major as the patches lie:
the class token is excluded, so any family can compute its similarity maps on the token grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size patches, linearly embedded (a strided conv)."""

    def __init__(self, img_size: int, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, D), row-major


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection (ViT / DeiT)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v, scale=self.scale)))


class TalkingHeadAttn(Attention):
    """CaiT's self-attention: the heads' logits are mixed before the softmax (proj_l) and after it (proj_w)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__(dim, heads, qkv_bias)
        self.proj_l = nn.Linear(heads, heads)
        self.proj_w = nn.Linear(heads, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
        attn = self.proj_l(logits.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).softmax(dim=-1)
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj(_merge_heads(attn @ v))


class ClassAttn(nn.Module):
    """CaiT's class attention: only the first token (the class token) queries all tokens."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q(u[:, :1]), self.num_heads)
        k, v = _split_heads(self.k(u), self.num_heads), _split_heads(self.v(u), self.num_heads)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v, scale=self.scale)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1 x), then x + mlp(norm2 x)."""

    def __init__(self, dim: int, heads: int, hidden: int, qkv_bias: bool, eps: float, attn: type = Attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attn(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LayerScaleBlock(Block):
    """CaiT's block: each residual branch scaled per channel (gamma_1, gamma_2)."""

    def __init__(self, dim: int, heads: int, hidden: int, qkv_bias: bool, eps: float, attn: type = TalkingHeadAttn):
        super().__init__(dim, heads, hidden, qkv_bias, eps, attn)
        self.gamma_1 = nn.Parameter(torch.ones(dim))
        self.gamma_2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class ClassBlock(LayerScaleBlock):
    """CaiT's class-attention block: updates the class token from [cls; patches]; the patches stay."""

    def __init__(self, dim: int, heads: int, hidden: int, qkv_bias: bool, eps: float):
        super().__init__(dim, heads, hidden, qkv_bias, eps, attn=ClassAttn)

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        cls = cls + self.gamma_1 * self.attn(self.norm1(torch.cat([cls, x], dim=1)))
        return cls + self.gamma_2 * self.mlp(self.norm2(cls))


class VisionTransformer(nn.Module):
    """DeiT / ViT without its head: one class token, position embeddings for it and every patch."""

    num_prefix_tokens = 1  # the class token, before the patches in `tokens`

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, mlp_hidden: int = 1536, qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1] + 1, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_hidden, qkv_bias, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.out_channels = embed_dim

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], dim=1) + self.pos_embed
        return self.norm(self.blocks(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patch_grid(self.tokens(x), self.num_prefix_tokens, self.grid_size)


class CaiT(nn.Module):
    """CaiT without its head: self-attention on the patches alone, then class attention."""

    num_prefix_tokens = 1

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 192, depth: int = 24,
                 num_heads: int = 4, mlp_hidden: int = 768, qkv_bias: bool = True, eps: float = 1e-6,
                 depth_token_only: int = 2, mlp_hidden_token: int = 768):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        self.blocks = nn.ModuleList(LayerScaleBlock(embed_dim, num_heads, mlp_hidden, qkv_bias, eps)
                                    for _ in range(depth))
        self.blocks_token_only = nn.ModuleList(ClassBlock(embed_dim, num_heads, mlp_hidden_token, qkv_bias, eps)
                                               for _ in range(depth_token_only))
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.out_channels = embed_dim

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        cls = self.cls_token.expand(len(t), -1, -1)
        for block in self.blocks_token_only:
            cls = block(t, cls)
        return self.norm(torch.cat([cls, t], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patch_grid(self.tokens(x), self.num_prefix_tokens, self.grid_size)


def patch_grid(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, prefix + h*w, D) tokens -> (B, D, h, w): the class (or other prefix) tokens dropped."""
    patches = tokens[:, prefix:]
    return patches.transpose(1, 2).reshape(len(tokens), tokens.shape[-1], *grid)


VIT_PRESETS = {  # timm's names: (builder, keyword arguments)
    "deit_tiny_patch16_224": (VisionTransformer, dict(embed_dim=192, num_heads=3, mlp_hidden=768)),
    "deit_small_patch16_224": (VisionTransformer, dict(embed_dim=384, num_heads=6, mlp_hidden=1536)),
    "deit_base_patch16_224": (VisionTransformer, dict(embed_dim=768, num_heads=12, mlp_hidden=3072)),
    "cait_xxs24_224": (CaiT, dict(embed_dim=192, depth=24, num_heads=4, mlp_hidden=768, mlp_hidden_token=768)),
}
