"""The ProtoPNet adapter against a slow, obvious implementation of its formulas."""

import math

import pytest
import torch
from torch import nn

from conftest import tiny_config
from protobench.adapters.protopnet import ProtoPNet, ProtoPNetAdapter, add_on_layers, default_class_identity
from protobench.models.backbones import BACKBONES, build_backbone
from protobench.errors import CheckpointError


def slow_protopnet(model: ProtoPNet, x: torch.Tensor):
    """Patch by patch, prototype by prototype: ||z_patch - p||^2, then the similarity."""
    z = model.conv_features(x)
    p = model.prototype_vectors
    k = p.shape[-1]
    b, _, h, w = z.shape
    d = torch.zeros(b, p.shape[0], h - k + 1, w - k + 1)
    for i in range(b):
        for j in range(p.shape[0]):
            for r in range(h - k + 1):
                for c in range(w - k + 1):
                    d[i, j, r, c] = ((z[i, :, r:r + k, c:c + k] - p[j]) ** 2).sum()
    eps = model.cfg.epsilon
    sim = torch.log((d + 1) / (d + eps)) if model.cfg.activation == "log" else -d
    logits = sim.amax(dim=(2, 3)) @ model.last_layer.weight.t()
    return sim, logits


@pytest.mark.parametrize("activation", ["log", "linear"])
@pytest.mark.parametrize("prototype_size", [1, 2])
def test_forward_matches_slow_implementation(activation, prototype_size):
    adapter = ProtoPNetAdapter.from_config(tiny_config(activation=activation, prototype_size=prototype_size), seed=1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps, logits = adapter(x)
        slow_maps, slow_logits = slow_protopnet(adapter.model, x)
    assert maps.shape == (2, 6, 5 - prototype_size, 5 - prototype_size)
    assert torch.allclose(maps, slow_maps, rtol=1e-4, atol=1e-4)
    assert torch.allclose(logits, slow_logits, rtol=1e-4, atol=1e-4)


def test_log_similarity_of_an_exact_match_is_log_1_over_eps():
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        z = adapter.model.conv_features(x)
        adapter.model.prototype_vectors[0] = z[0, :, 1, 3, None, None]
        maps, _ = adapter(x)
    assert maps[0, 0, 1, 3].item() == pytest.approx(math.log(1 / 1e-4), rel=1e-3)
    assert maps[0, 0].argmax().item() == 1 * 4 + 3


def test_gradient_reaches_the_input(tiny_adapter):
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    maps, logits = tiny_adapter(x)
    (maps.sum() + logits.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_bottleneck_add_on_halves_channels_down_to_d():
    layers = add_on_layers("bottleneck", 512, 128)
    convs = [(m.in_channels, m.out_channels) for m in layers if isinstance(m, nn.Conv2d)]
    assert convs == [(512, 256), (256, 256), (256, 128), (128, 128)]
    assert isinstance(layers[-1], nn.Sigmoid) and isinstance(layers[3], nn.ReLU)
    regular = add_on_layers("regular", 512, 128)
    assert [type(m) for m in regular] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.Sigmoid]
    with pytest.raises(ValueError):
        add_on_layers("deep", 512, 128)


def test_default_class_identity():
    identity = default_class_identity(6, 3)
    assert identity.argmax(dim=1).tolist() == [0, 0, 1, 1, 2, 2]
    assert identity.sum().item() == 6
    with pytest.raises(ValueError):
        default_class_identity(7, 3)


EXPECTED_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
                     "densenet121": 1024, "densenet161": 2208, "densenet169": 1664, "densenet201": 1920,
                     **{f"vgg{n}{bn}": 512 for n in (11, 13, 16, 19) for bn in ("", "_bn")}, "tinycnn": 128,
                     "resnet": 512, "vgg": 512, "densenet": 1024, "convnext": 768, "convnext_tiny": 768,
                     "deit": 384, "deit_tiny_patch16_224": 192, "deit_small_patch16_224": 384,
                     "deit_base_patch16_224": 768, "cait": 192, "cait_xxs24_224": 192}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_with_the_original_key_layout(name):
    with torch.device("meta"):  # shapes and keys only: no time spent initializing weights
        net = build_backbone(name)
    assert net.out_channels == EXPECTED_CHANNELS[name]
    keys = list(net.state_dict())
    if name.startswith("resnet"):
        assert keys[0] == "conv1.weight" and any(k.startswith("layer4.") for k in keys)
    elif name.startswith("vgg"):
        assert keys[0] == "features.0.weight"
    elif name.startswith("densenet"):
        assert "features.denseblock1.denselayer1.norm1.weight" in keys and "features.norm5.weight" in keys
    elif name.startswith("convnext"):
        assert "features.0.0.weight" in keys and "features.7.2.layer_scale" in keys
    elif name.startswith("deit"):  # timm 0.4.12's names (ProtoViT's pickles)
        assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.11.attn.qkv.weight",
                "blocks.11.mlp.fc2.bias", "norm.weight"} <= set(keys)
    elif name.startswith("cait"):
        assert {"cls_token", "pos_embed", "blocks.23.gamma_1", "blocks.23.attn.proj_l.weight",
                "blocks_token_only.1.attn.q.weight", "blocks_token_only.1.gamma_2", "norm.weight"} <= set(keys)


@pytest.mark.parametrize("name, side", [("deit_tiny_patch16_224", 14), ("cait_xxs24_224", 14)])
def test_transformer_gives_its_patch_tokens_on_their_grid(name, side):
    net = build_backbone(name).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        grid, tokens = net(x), net.tokens(x)
    assert grid.shape == (1, EXPECTED_CHANNELS[name], side, side) and tokens.shape[1] == 1 + side * side
    # row-major: grid cell (r, c) is token 1 + r * side + c; the class token (index 0) is left out
    assert torch.equal(grid[0, :, 2, 5], tokens[0, 1 + 2 * side + 5])


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "densenet121"])
def test_backbone_map_is_7x7_at_224(name):
    with torch.no_grad():
        out = build_backbone(name).eval()(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, EXPECTED_CHANNELS[name], 7, 7)


def test_save_load_roundtrip(tmp_path, tiny_adapter):
    path = tmp_path / "m.safetensors"
    tiny_adapter.save(str(path))
    loaded = ProtoPNetAdapter.load(str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(tiny_adapter(x), loaded(x)):
            assert torch.equal(a, b)
    assert loaded.info == tiny_adapter.info
    assert torch.equal(loaded.prototype_class_identity, tiny_adapter.prototype_class_identity)


def test_load_rejects_weights_of_another_shape(tmp_path, tiny_adapter):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    tiny_adapter.save(str(path))
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors["last_layer.weight"] = torch.zeros(5, 6)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="wrong shape"):
        ProtoPNetAdapter.load(str(path))


def test_prototype_layer_stays_fp32_under_bf16_autocast():
    # |z|^2 - 2 z.p + |p|^2 is a small difference of large terms: computed in bf16 it is noise
    # (measured: mean map error 2.6 on this model, against 0.02 with the layer in fp32).
    adapter = ProtoPNetAdapter.from_config(tiny_config(prototype_dim=64), seed=0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        z = adapter.model.conv_features(x)  # prototypes near real patches, as in a trained model
        patches = z[:, :, 1:3, 1:3].permute(0, 2, 3, 1).reshape(-1, 64)[:6]
        adapter.model.prototype_vectors.copy_(patches[:, :, None, None] + 0.01 * torch.randn(6, 64, 1, 1))
        full, _ = adapter(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = adapter(x)
    assert half.dtype == torch.float32
    assert (full - half).abs().mean() < 0.2
