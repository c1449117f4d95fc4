"""Checkpoints written exactly as each family's original code writes them, read without that code.

Each test writes a tiny model in the original on-disk format (tests/originals.py), checks
that the original modules are no longer importable, loads the file with protobench and
compares maps and logits with a slow, obvious implementation of the family's formula.
"""

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from originals import (BottleneckW, PIPNetW, PrototypeChooserW, ResNetFeaturesW, VGGFeaturesW, as_old_torch_pickle,
                       original_modules, pipnet_convnext)
from protobench.models.lookup import get_adapter
from protobench.errors import CheckpointError

# The original code computes |z|^2 - 2 z.p + |p|^2 in float32; on these tiny models, at these (random, not small)
# distances, that formula is itself up to 5.3e-6 from the exact value (measured: the original formula against
# the slow references below, worst case the 2x2-prototype linear ProtoPNet). TOL is that noise: parity means
# agreeing with the original's output as closely as the original agrees with itself. protobench's float64
# distance meets the references to within 1e-6 here (docs/performance.md, Precision); near d = 0
# the original's noise grows as 1 / (d + eps) and only a float64 reference is exact (see the test at the end).
TOL = dict(rtol=1e-5, atol=1e-5)


def assert_not_importable(*names):
    for name in names:
        assert name not in sys.modules and importlib.util.find_spec(name) is None, name


def randomize_batch_norm(net: nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics, so a wrong layer order would show."""
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)


def squared_distances(z, prototypes):
    """(B, P, h, w): ||z[b, :, r, c] - p_j||^2, one patch and one prototype at a time."""
    p = prototypes[:, :, 0, 0]
    d = torch.zeros(z.shape[0], p.shape[0], z.shape[2], z.shape[3])
    for b in range(z.shape[0]):
        for j in range(p.shape[0]):
            for r in range(z.shape[2]):
                for c in range(z.shape[3]):
                    d[b, j, r, c] = ((z[b, :, r, c] - p[j]) ** 2).sum()
    return d


def log_similarity(d):
    return torch.log((d + 1) / (d + 1e-4))


def outputs(adapter, x):
    with torch.no_grad():
        return adapter(x)


# ---------------------------------------------------------------- ProtoPNet and TesNet: whole pickles


def write_ppnet(tmp_path, family="protopnet", backbone="resnet", activation="log", legacy=False, prune=False,
                focal=False):
    with original_modules(tmp_path / "src", family) as m:
        if backbone == "resnet":  # PPNet with BasicBlocks, TESNet with Bottlenecks; strides read from the pickle
            block = m.BasicBlock if family == "protopnet" else m.Bottleneck
            features, in_ch = m.ResNet_features(block, [1, 2, 1, 1], strides=(1, 2, 1, 1)), 8 * block.expansion
        else:
            features, in_ch = m.VGG_features([4, "M", 8, 8, "M", 8, "M"], batch_norm=True), 8
        cls = m.PPNet if family == "protopnet" else m.TESNet
        net = cls(features, in_ch, (6, 4, 1, 1), 3, activation=activation).eval()
        randomize_batch_norm(net)
        if prune:  # ProtoPNet's prune_prototypes: fewer rows, identity sliced, shape becomes a list
            keep = torch.tensor([0, 1, 3, 4, 5])
            net.prototype_vectors = nn.Parameter(net.prototype_vectors.data[keep])
            net.ones = nn.Parameter(net.ones.data[keep], requires_grad=False)
            net.last_layer.weight = nn.Parameter(net.last_layer.weight.data[:, keep])
            net.prototype_class_identity = net.prototype_class_identity[keep]
            net.num_prototypes, net.prototype_shape = 5, [5, 4, 1, 1]
        if focal:
            net.focal_sim = True  # the interpretability-benchmark fork's attribute
        if legacy:
            as_old_torch_pickle(net)  # as torch 1.0-1.3 wrote ProtoPNet's files in 2019
        path = tmp_path / "10push0.7512.pth"
        torch.save(net, path, **({"_use_new_zipfile_serialization": False} if legacy else {}))
    assert_not_importable("model", "models", "resnet_features", "vgg_features")
    return path, net


def slow_ppnet(net, x, focal=False):
    z = net.latent(x)
    d = squared_distances(z, net.prototype_vectors)
    if net.prototype_activation_function == "log":
        sim = log_similarity
    else:
        sim = lambda v: -v  # noqa: E731
    act = sim(d.amin(dim=(2, 3)))
    if focal:
        act = act - sim(d.mean(dim=(2, 3)))
    return sim(d), act @ net.last_layer.weight.t()


@pytest.mark.parametrize("backbone, activation, legacy, prune, focal", [
    ("resnet", "log", False, False, False),
    ("vgg", "linear", True, False, False),  # a pre-1.6 file, through the restricted unpickler
    ("resnet", "log", False, True, False),
    ("vgg", "log", False, False, True),
])
def test_protopnet_pickle(tmp_path, backbone, activation, legacy, prune, focal):
    path, net = write_ppnet(tmp_path, backbone=backbone, activation=activation, legacy=legacy, prune=prune,
                            focal=focal)
    from protobench.checkpoints.formats import sniff

    assert sniff(path) == ("legacy" if legacy else "zip")
    adapter = get_adapter("auto").load(str(path))
    assert adapter.name == "protopnet" and adapter.info.input_size == 32
    assert torch.equal(adapter.prototype_class_identity, net.prototype_class_identity)
    x = torch.randn(2, 3, 32, 32)
    maps, logits = outputs(adapter, x)
    with torch.no_grad():
        slow_maps, slow_logits = slow_ppnet(net, x, focal)
    assert maps.shape == (2, net.num_prototypes, 4, 4)
    assert torch.allclose(maps, slow_maps, **TOL) and torch.allclose(logits, slow_logits, **TOL)


def test_tesnet_pickle(tmp_path):
    path, net = write_ppnet(tmp_path, family="tesnet")
    adapter = get_adapter("auto").load(str(path))
    assert adapter.name == "tesnet"
    x = torch.randn(2, 3, 32, 32)
    maps, logits = outputs(adapter, x)
    with torch.no_grad():
        z = net.latent(x)
        p = net.prototype_vectors[:, :, 0, 0]
        proj = torch.zeros(2, 6, 4, 4)
        for j in range(6):  # <z_hw, p_j / |p_j|>
            proj[:, j] = (z * (p[j] / p[j].norm())[None, :, None, None]).sum(dim=1)
    assert torch.allclose(maps, proj, **TOL)
    assert torch.allclose(logits, proj.amax(dim=(2, 3)) @ net.last_layer.weight.t(), **TOL)


def test_protopnet_and_tesnet_state_dicts_are_ambiguous(tmp_path):
    _, net = write_ppnet(tmp_path, backbone="vgg")
    path = tmp_path / "weights.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(CheckpointError, match="--adapter protopnet or --adapter tesnet"):
        get_adapter("auto").load(str(path))
    x = torch.randn(2, 3, 32, 32)
    as_protopnet = get_adapter("protopnet").load(str(path))  # identity: ProtoPNet's j // (P / C)
    with torch.no_grad():
        assert torch.allclose(outputs(as_protopnet, x)[1], slow_ppnet(net, x)[1], **TOL)
    assert get_adapter("tesnet").load(str(path)).name == "tesnet"


# ---------------------------------------------------------------- ProtoPool: {'model_state_dict', 'epoch'}


def write_protopool(tmp_path, use_last_layer=True, use_thresh=True):
    features = VGGFeaturesW([4, "M", 8, "M"])  # 8x8 maps at 32 px
    net = PrototypeChooserW(features, 8, num_prototypes=5, num_descriptive=2, num_classes=3,
                            use_thresh=use_thresh, use_last_layer=use_last_layer).eval()
    path = tmp_path / "best_model_push.pth"
    torch.save({"model_state_dict": net.state_dict(), "epoch": 12}, path)
    return path, net


def slow_protopool(net, x, presence):
    """presence (C, P, N) as the original mixes it; the slots' focal similarity, then the last layer."""
    z = net.add_on_layers(net.features(x))
    d = squared_distances(z, net.prototype_vectors)
    mins, avgs = d.amin(dim=(2, 3)), d.mean(dim=(2, 3))
    slots = torch.zeros(x.shape[0], 3, 2)
    for c in range(3):
        for n in range(2):
            slots[:, c, n] = log_similarity(mins @ presence[c, :, n]) - log_similarity(avgs @ presence[c, :, n])
    logits = slots.flatten(1) @ net.last_layer.weight.t() if net.use_last_layer else slots.sum(dim=-1)
    return log_similarity(d) - log_similarity(avgs)[..., None, None], logits


@pytest.mark.parametrize("use_last_layer, use_thresh", [(True, True), (False, False)])
def test_protopool_state_dict(tmp_path, use_last_layer, use_thresh):
    path, net = write_protopool(tmp_path, use_last_layer, use_thresh)
    adapter = get_adapter("auto").load(str(path))
    assert adapter.name == "protopool"
    chosen = net.proto_presence.argmax(dim=1)  # (C, N): the prototype in each slot
    one_hot = torch.zeros(3, 5, 2)
    for c in range(3):
        for n in range(2):
            one_hot[c, chosen[c, n], n] = 1
            assert adapter.prototype_class_identity[chosen[c, n], c] >= 1
    assert adapter.prototype_class_identity.sum() == 6  # every slot counted once
    x = torch.randn(2, 3, 32, 32)
    maps, logits = outputs(adapter, x)
    with torch.no_grad():
        slow_maps, slow_logits = slow_protopool(net, x, one_hot)
        # the original's evaluation: gumbel_softmax(presence * 1e4, tau=0.5); its noise is negligible at that scale
        torch.manual_seed(5)
        gumbel = F.gumbel_softmax(net.proto_presence * 10e3, tau=0.5, dim=1)
        _, gumbel_logits = slow_protopool(net, x, gumbel)
    assert torch.allclose(maps, slow_maps, **TOL) and torch.allclose(logits, slow_logits, **TOL)
    assert torch.allclose(logits, gumbel_logits, **TOL)


# ---------------------------------------------------------------- PIP-Net: DataParallel state dict, no extension


def write_pipnet(tmp_path, backbone="convnext", bias=False):
    if backbone == "convnext":  # the original rule (stride 1 where in_channels > threshold), tiny widths
        features, prototypes = pipnet_convnext([4, 8, 8, 6], [1, 1, 1, 1], threshold=6), 6
    else:  # PIP-Net's resnet_features: stride 1 in layer3 and layer4
        features, prototypes = ResNetFeaturesW(BottleneckW, [1, 1, 1, 1], widths=(2, 2, 2, 2), strides=(1, 2, 1, 1)), 8
    net = PIPNetW(features, prototypes, 3, bias=bias).eval()
    randomize_batch_norm(net)
    optimizer = torch.optim.AdamW(net.parameters())
    # nn.DataParallel(net).state_dict() is net's with "module." before every key
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "checkpoints" / "net_trained_last"
    path.parent.mkdir()
    torch.save({"model_state_dict": state, "optimizer_net_state_dict": optimizer.state_dict(),
                "optimizer_classifier_state_dict": optimizer.state_dict()}, path)
    return path, net


def slow_pipnet(net, x):
    f = net._net(x)
    e = torch.exp(f - f.amax(dim=1, keepdim=True))
    maps = e / e.sum(dim=1, keepdim=True)  # softmax over prototypes at each location
    pooled = maps.amax(dim=(2, 3))
    pooled = pooled * (pooled >= 0.1)  # inference: similarities below 0.1 count as absent
    logits = pooled @ torch.relu(net._classification.weight).t()
    if net._classification.bias is not None:
        logits = logits + net._classification.bias
    return maps, logits


@pytest.mark.parametrize("backbone, bias, options, side", [
    ("convnext", False, {"stride1_above": 6}, 2),
    ("resnet", True, {}, 4),
])
def test_pipnet_state_dict(tmp_path, backbone, bias, options, side):
    path, net = write_pipnet(tmp_path, backbone, bias)
    adapter = get_adapter("auto").load(str(path), **options)
    assert adapter.name == "pipnet"
    weight = torch.relu(net._classification.weight.detach()).t()
    assert torch.equal(adapter.prototype_class_identity, weight * (weight > 1e-3))
    x = torch.randn(2, 3, 32, 32)
    maps, logits = outputs(adapter, x)
    with torch.no_grad():
        slow_maps, slow_logits = slow_pipnet(net, x)
    assert maps.shape[2:] == (side, side)
    assert torch.allclose(maps, slow_maps, **TOL) and torch.allclose(logits, slow_logits, **TOL)


def test_pipnet_variant_is_an_option_because_the_weights_cannot_tell(tmp_path):
    path, _ = write_pipnet(tmp_path)
    default = get_adapter("pipnet").load(str(path))  # convnext_tiny_26's threshold (100): no stride changed here
    assert outputs(default, torch.randn(1, 3, 32, 32))[0].shape[2:] == (1, 1)
    with pytest.raises(Exception, match="net must be one of"):
        get_adapter("pipnet").load(str(path), net="resnet50")


# ---------------------------------------------------------------- ProtoTree: whole pickle, _out_map only in it


def write_prototree(tmp_path, prune=False, kontschieder=False, log_probabilities=False):
    with original_modules(tmp_path / "src", "prototree") as m:
        features = m.ResNet_features(m.BasicBlock, [1, 1, 1, 1], strides=(1, 2, 1, 1))
        tree = m.ProtoTree(m, features, 8, num_classes=3, depth=3 if prune else 2, dim=4, seed=3).eval()
        randomize_batch_norm(tree)
        for node in tree.modules():  # the --kontschieder_normalization and --log_probabilities flags
            if hasattr(node, "_log_probabilities"):
                node._log_probabilities = log_probabilities
            if hasattr(node, "_dist_params"):
                node._kontschieder_normalization = kontschieder
                if kontschieder:  # its leaves hold non-negative counts, not logits
                    node._dist_params.data.abs_()
        if prune:  # ProtoTree's pruning: node 1's left subtree goes, its right child takes node 1's place
            tree._root.l = tree._root.l.r
        directory = tmp_path / "checkpoints" / "pruned_and_projected"
        directory.mkdir(parents=True)
        torch.save(tree, directory / "model.pth")
        torch.save(tree.state_dict(), directory / "model_state.pth")
    assert_not_importable("prototree", "util", "features")
    return directory, tree


def preorder_branches(node):
    if hasattr(node, "_dist_params"):
        return []
    return [node] + preorder_branches(node.l) + preorder_branches(node.r)


def leaves_below(node):
    return [node] if hasattr(node, "_dist_params") else leaves_below(node.l) + leaves_below(node.r)


@pytest.mark.parametrize("prune, kontschieder, log_probabilities", [
    (False, False, False), (True, False, False), (False, True, False), (False, False, True)])
def test_prototree_pickle(tmp_path, prune, kontschieder, log_probabilities):
    # log_probabilities changes the arithmetic only (and adds 1e-7 in log(1 - s)): same output
    directory, tree = write_prototree(tmp_path, prune, kontschieder, log_probabilities)
    adapter = get_adapter("auto").load(str(directory / "model.pth"))
    assert adapter.name == "prototree"
    branches = preorder_branches(tree._root)
    assert adapter.info.num_prototypes == len(branches) == (5 if prune else 3)
    x = torch.randn(2, 3, 32, 32)
    maps, logits = outputs(adapter, x)
    with torch.no_grad():
        d = tree.distances(x)
        expected_maps = torch.stack([torch.exp(-d[:, tree._out_map[b]]) for b in branches], dim=1)
        expected_logits = torch.log(tree(x))
    assert torch.allclose(maps, expected_maps, **TOL) and torch.allclose(logits, expected_logits, **TOL)
    for k, branch in enumerate(branches):  # share of the leaves below the node that vote for each class
        votes = torch.tensor([leaf._dist_params.argmax().item() for leaf in leaves_below(branch)])
        share = torch.stack([(votes == c).float().mean() for c in range(3)])
        assert torch.allclose(adapter.prototype_class_identity[k], share)


def test_prototree_state_dict_alone_is_refused(tmp_path):
    directory, _ = write_prototree(tmp_path)
    with pytest.raises(CheckpointError, match="node-to-prototype map.*model.pth"):
        get_adapter("auto").load(str(directory / "model_state.pth"))


# ---------------------------------------------------------------- exact matches: where float32 cancels


def direct_squared_distances(z, prototypes):
    """(B, P, h, w) sum of squared differences in float64: no cancellation, the exact value to 1e-15."""
    z, p = z.double(), prototypes.double()[:, :, 0, 0]
    return ((z[:, None] - p[None, :, :, None, None]) ** 2).sum(dim=2)


def wide(family):
    """The family's tiny model with 64 latent channels: |z|^2 about 16, as trained models have."""
    from dataclasses import replace as replaced

    model = get_adapter(family).tiny().model
    if family == "protopnet":
        from conftest import tiny_config

        return get_adapter(family).from_config(tiny_config(prototype_dim=64), seed=0).model
    if family == "protopool":
        return type(model)(replaced(model.cfg, proto_depth=64))
    structure = {name: getattr(model, name) for name in ("branch_prototype", "branch_children", "branch_index",
                                                         "leaf_index")}
    return type(model)(replaced(model.cfg, num_features=64), structure)


def log_sim(d):
    return torch.log((d + 1) / (d + 1e-4))


EXACT = {  # family -> (latent z of x, the prototype tensor, the maps worked out from exact distances)
    "protopnet": (lambda m, x: m.conv_features(x), lambda m: m.prototype_vectors, lambda m, d: log_sim(d)),
    "protopool": (lambda m, x: m.add_on_layers(m.features(x)), lambda m: m.prototype_vectors,
                  lambda m, d: log_sim(d) - log_sim(d.mean(dim=(2, 3)))[..., None, None]),
    "prototree": (lambda m, x: m._add_on(m._net(x)), lambda m: m.prototype_layer.prototype_vectors,
                  lambda m, d: torch.exp(-torch.sqrt(d + 1e-14))[:, m.branch_prototype]),
}


@pytest.mark.parametrize("family", list(EXACT))
def test_prototypes_on_their_own_patches_give_exact_maps(family):
    # after push every prototype is a training patch: d = 0 there, where the float32 formula leaves noise of
    # ~1e-6 that the log similarity multiplies by 1e4 (measured before the float64 distance: maps off by up
    # to 0.07 for ProtoPNet, 2e-3 for ProtoTree)
    latent, prototypes, expected = EXACT[family]
    model = wide(family).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = latent(model, x)
        p = prototypes(model)
        cells = torch.randperm(2 * z.shape[2] * z.shape[3])[:p.shape[0]]
        for j, cell in enumerate(cells.tolist()):
            b, rest = divmod(cell, z.shape[2] * z.shape[3])
            p[j] = z[b, :, rest // z.shape[3], rest % z.shape[3], None, None]
        maps, _ = model(x)
        exact = expected(model, direct_squared_distances(z, p))
    assert maps.dtype == torch.float32
    assert torch.allclose(maps, exact.float(), rtol=1e-6, atol=1e-6), (maps - exact).abs().max()


# ---------------------------------------------------------------- full-size architectures (slow)


@pytest.mark.slow
def test_full_size_protopnet_resnet34_and_pipnet_convnext_tiny(tmp_path):
    """The repositories' CUB configurations at 224 px: ProtoPNet resnet34 (7x7) and PIP-Net convnext_tiny_26 (26x26)."""
    with original_modules(tmp_path / "src", "protopnet") as m:
        features = m.ResNet_features(m.BasicBlock, [3, 4, 6, 3], widths=(64, 128, 256, 512))
        net = m.PPNet(features, 512, (2000, 128, 1, 1), 200, img_size=224).eval()
        torch.save(net, tmp_path / "ppnet.pth")
    adapter = get_adapter("auto").load(str(tmp_path / "ppnet.pth"))
    assert adapter.model.cfg.backbone_kwargs["layers"] == [3, 4, 6, 3] and adapter.info.input_size == 224
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        maps, logits = adapter(x)
        z = net.latent(x)  # vectorized form of squared_distances, checked against it on the tiny models
        d = ((z[:, None] - net.prototype_vectors[None, :, :, 0, 0, None, None]) ** 2).sum(dim=2)
        expected = log_similarity(d.amin(dim=(2, 3))) @ net.last_layer.weight.t()
    assert maps.shape == (2, 2000, 7, 7) and torch.allclose(logits, expected, rtol=1e-3, atol=1e-3)

    pip = PIPNetW(pipnet_convnext([96, 192, 384, 768], [3, 3, 9, 3], threshold=100), 768, 200).eval()
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in pip.state_dict().items()}}, tmp_path / "net_trained")
    adapter = get_adapter("auto").load(str(tmp_path / "net_trained"))
    with torch.no_grad():
        maps, logits = adapter(x)
        slow_maps, slow_logits = slow_pipnet(pip, x)
    assert maps.shape == (2, 768, 26, 26)
    assert torch.allclose(maps, slow_maps, atol=1e-5) and torch.allclose(logits, slow_logits, rtol=1e-4, atol=1e-4)
