"""Deformable ProtoPNet, ST-ProtoPNet and ProtoPShare read from files written exactly as their
original code writes them (tests/originals_cnn.py), without that code, and compared with a slow,
obvious implementation of each family's formula written here."""

import math
import os

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import write_image_folder
from hostile import Call
from originals import BasicBlockW, ResNetFeaturesW, VGGFeaturesW, original_modules
from originals_cnn import DEFORMABLE, PROTOPSHARE, STProtoPNetW, share
from protobench.errors import CheckpointError
from protobench.models.detect import detect_family, read_family_checkpoint
from protobench.models.lookup import get_adapter
from test_cli import invoke
from test_originals import TOL, assert_not_importable, outputs, randomize_batch_norm, slow_ppnet, write_ppnet


def assert_parity(adapter, x, expected, shape):
    """The adapter's maps (of `shape`) and logits on x are the slow implementation's `expected`."""
    maps, logits = outputs(adapter, x)
    assert maps.shape == shape
    assert torch.allclose(maps, expected[0], **TOL) and torch.allclose(logits, expected[1], **TOL)


# ---------------------------------------------------------------- Deformable ProtoPNet: whole pickle of model.PPNet


def write_deformable(tmp_path, backbone="resnet", add_on="upsample", hidden=4, using_deform=True, prune=False,
                     payload=None, **attributes):
    with original_modules(tmp_path / "src", DEFORMABLE) as m:
        if backbone == "resnet":  # 4x4 at 32 px, 8x8 after the upsample
            features = m.ResNet_features(m.BasicBlock, [1, 1, 1, 1], widths=(4, 4, 8, 8), strides=(1, 2, 1, 1))
        else:  # the repository's VGG has no final max-pool: 8x8 at 32 px
            features = m.VGG_features([4, "M", 8, "M", 8], batch_norm=True)
        dim = 6 if add_on == "regular" else 8
        net = m.PPNet(features, 8, (6, dim, 2, 2), 3, add_on=add_on, hidden=hidden, using_deform=using_deform).eval()
        randomize_batch_norm(net)
        if prune:  # its prune_prototypes: rows sliced, in_features updated, prototype_shape a list
            keep = [0, 2, 3, 4, 5]
            net.prototype_vectors = nn.Parameter(net.prototype_vectors.data[keep])
            net.ones = nn.Parameter(net.ones.data[keep], requires_grad=False)
            net.last_layer.weight.data = net.last_layer.weight.data[:, keep]
            net.last_layer.in_features = net.num_prototypes = 5
            net.prototype_shape = list(net.prototype_vectors.shape)
            net.prototype_class_identity = net.prototype_class_identity[keep]
        for name, value in attributes.items():
            setattr(net, name, value)
        if payload is not None:
            net.payload = payload
        path = tmp_path / "30push0.8012.pth"
        torch.save(net, path)
    assert_not_importable("model", "resnet_features", "vgg_features")
    return path, net


def bilinear_or_zero(m, y, x):
    """m (C, H, W) at the real point (y, x): the four corners' weighted sum, a corner outside the map
    counting 0, and 0 once the point is a whole cell outside (the original kernel's rules)."""
    _, h, w = m.shape
    if y <= -1 or x <= -1 or y >= h or x >= w:
        return torch.zeros(m.shape[0])
    y0, x0 = math.floor(y), math.floor(x)
    value = torch.zeros(m.shape[0])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                value += wy * wx * m[:, yy, xx]
    return value


def slow_deformable(net, x):
    """Each latent vector scaled to length 64 (sqrt(4) parts), each prototype part to 1/2, both with two
    epsilon channels; each part sampled at its offset position, one point at a time: sqrt of the
    interpolated squares. Then the cosine over the 4 parts, relu, max over positions, last layer."""
    eps, length, k = net.epsilon_val, net.input_vector_length, net.prototype_shape[-1]
    z = net.latent(x)
    z = torch.cat([z, torch.full((z.shape[0], 2, *z.shape[2:]), eps)], dim=1)
    x_n = length * z / torch.sqrt((z**2).sum(dim=1, keepdim=True) + eps) / k
    p = torch.cat([net.prototype_vectors, torch.full((net.prototype_vectors.shape[0], 2, k, k), eps)], dim=1)
    p_n = p / (torch.sqrt((p**2).sum(dim=1, keepdim=True) + eps) + eps) / k
    b_, _, h, w = x_n.shape
    if not net.using_deform:  # a plain convolution: no padding, no dilation
        dot = torch.zeros(b_, p.shape[0], h - 1, w - 1)
        for b in range(b_):
            for r in range(h - 1):
                for c in range(w - 1):
                    patch = x_n[b, :, r:r + 2, c:c + 2]
                    dot[b, :, r, c] = (p_n * patch).sum(dim=(1, 2, 3))
    else:
        offset = net.conv_offset(x_n)
        (pad, _), (dil, _) = net.prototype_padding, net.prototype_dilation
        dot = torch.zeros(b_, p.shape[0], h, w)
        for b in range(b_):
            squares = x_n[b] ** 2
            for r in range(h):
                for c in range(w):
                    for i in range(k):
                        for j in range(k):
                            part = i * k + j
                            y = r - pad + dil * i + float(offset[b, 2 * part, r, c])
                            xx = c - pad + dil * j + float(offset[b, 2 * part + 1, r, c])
                            sample = torch.sqrt(bilinear_or_zero(squares, y, xx))
                            dot[b, :, r, c] += p_n[:, :, i, j] @ sample
    maps = torch.relu(dot / (length * 1.01))
    return maps, maps.amax(dim=(2, 3)) @ net.last_layer.weight.t(), net.conv_offset(x_n)


@pytest.mark.parametrize("backbone, add_on, hidden, using_deform, prune, side", [
    ("resnet", "upsample", 4, True, False, 8),  # the repository's settings, tiny
    ("vgg", "upsample", 0, True, True, 16),  # offsets from one conv; pruned
    ("resnet", "identity", 4, True, False, 4),
    ("resnet", "upsample", 4, False, False, 7),  # using_deform=False: a plain conv, (H - 1) x (W - 1)
])
def test_deformable_pickle(tmp_path, backbone, add_on, hidden, using_deform, prune, side):
    path, net = write_deformable(tmp_path, backbone, add_on, hidden, using_deform, prune)
    adapter = get_adapter("auto").load(str(path))
    assert adapter.name == "deformable" and adapter.info.input_size == 32
    assert torch.equal(adapter.prototype_class_identity, net.prototype_class_identity)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        slow_maps, slow_logits, offsets = slow_deformable(net, x)
    assert_parity(adapter, x, (slow_maps, slow_logits), (2, net.num_prototypes, side, side))
    assert slow_maps.max() > 0.1 and offsets.abs().max() > 1  # the parts do move, some of them outside the map


def test_deformable_state_dict_with_protopnet_add_on_is_told_apart(tmp_path):
    """ProtoPNet and TesNet claim a state dict with add_on_layers.*; the offsets' keys say Deformable."""
    _, net = write_deformable(tmp_path, backbone="vgg", add_on="regular")  # its VGG: no final max-pool
    path = tmp_path / "weights.pth"
    torch.save(net.state_dict(), path)
    adapter = get_adapter("auto").load(str(path), img_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert adapter.name == "deformable" and torch.allclose(outputs(adapter, x)[1], slow_deformable(net, x)[1],
                                                               **TOL)
    with pytest.raises(CheckpointError, match="holds a Deformable ProtoPNet checkpoint, not 'tesnet': "
                                              "run with --adapter deformable"):
        get_adapter("tesnet").load(str(path))


def test_deformable_is_not_read_as_protopnet(tmp_path):
    path, _ = write_deformable(tmp_path)
    with pytest.raises(CheckpointError, match="holds a Deformable ProtoPNet checkpoint, not 'protopnet': "
                                              "run with --adapter deformable"):
        get_adapter("protopnet").load(str(path))


def test_deformable_pickle_with_a_payload_is_refused(tmp_path):
    flag = tmp_path / "RAN"
    path, _ = write_deformable(tmp_path, payload=Call(os.system, f"touch {flag}"))
    with pytest.raises(CheckpointError, match="refusing to load .*system"):
        get_adapter("auto").load(str(path))
    assert not flag.exists()


def test_deformable_upsample_other_than_the_original_is_refused(tmp_path):
    path, _ = write_deformable(tmp_path, add_on_layers=nn.Upsample(scale_factor=3, mode="nearest"))
    with pytest.raises(CheckpointError, match="upsample with scale 3.*x2 bilinear"):
        get_adapter("auto").load(str(path))


# ---------------------------------------------------------------- ST-ProtoPNet: state dict, two prototype sets


def write_st(tmp_path, variant, backbone):
    if backbone == "vgg":  # full/'s VGG has no final max-pool (8x8 at 32 px), cropped/'s has one (4x4)
        cfg = [4, "M", 8, "M", 8] + (["M"] if variant == "cropped" else [])
        features = VGGFeaturesW(cfg)
    else:  # standard strides: 2x2 at 64 px, 4x4 after full/'s upsample
        features = ResNetFeaturesW(BasicBlockW, [1, 1, 1, 1], widths=(4, 4, 8, 8))
    net = STProtoPNetW(features, 8, (6, 4, 1, 1), 3, variant=variant, upsample=backbone != "vgg").eval()
    randomize_batch_norm(net)
    path = tmp_path / "80nopush0.8024.pth"
    torch.save(net.state_dict(), path)  # util/save.py: the state dict, never the model
    return path, net


def slow_st(net, x, variant):
    """Per set and position: the cosine of the latent vector with each prototype, relu'd (full), or its
    projection on the unit prototype (cropped); logits summed over the sets."""
    f = net.features(x)
    maps, logits = [], 0
    for name in ("trivial", "support"):
        z = getattr(net, f"add_on_layers_{name}")(f)
        p = getattr(net, f"prototype_vectors_{name}")[:, :, 0, 0]
        unit = p / p.norm(dim=1, keepdim=True)
        a = torch.zeros(z.shape[0], p.shape[0], *z.shape[2:])
        for b in range(z.shape[0]):
            for r in range(z.shape[2]):
                for c in range(z.shape[3]):
                    v = z[b, :, r, c]
                    a[b, :, r, c] = torch.relu(unit @ (v / v.norm())) if variant == "full" else unit @ v
        maps.append(a)
        logits = logits + a.amax(dim=(2, 3)) @ getattr(net, f"last_layer_{name}").weight.t()
    return torch.cat(maps, dim=1), logits


@pytest.mark.parametrize("variant, backbone, size, side", [
    ("full", "vgg", 32, 8), ("full", "resnet", 64, 4), ("cropped", "vgg", 32, 4), ("cropped", "resnet", 64, 2)])
def test_st_protopnet_state_dict(tmp_path, variant, backbone, size, side):
    path, net = write_st(tmp_path, variant, backbone)
    adapter = get_adapter("auto").load(str(path), img_size=size)
    assert adapter.name == "stprotopnet" and adapter.model.cfg.variant == variant
    identity = torch.zeros(6, 3)
    identity[torch.arange(6), torch.arange(6) // 2] = 1  # prototype j of a set belongs to class j // (6 / 3)
    assert torch.equal(adapter.prototype_class_identity, torch.cat([identity, identity]))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert_parity(adapter, x, slow_st(net, x, variant), (2, 12, side, side))


# ---------------------------------------------------------------- ProtoPShare: whole pickle after merging


def write_protopshare(tmp_path, merges=((1, 2), (2, 3)), own_constructor=False):
    """A ProtoPNet pickle (or one built by ProtoPShare's constructor), its prototypes merged as
    ProtoPShare's join does: 1 (class 0) takes 2 (class 1), then 2 (class 1, formerly 3) takes 3 (class 2)."""
    with original_modules(tmp_path / "src", PROTOPSHARE if own_constructor else "protopnet") as m:
        features = m.ResNet_features(m.BasicBlock, [1, 2, 1, 1], strides=(1, 2, 1, 1))
        net = m.PPNet(features, 8, (6, 4, 1, 1), 3).eval()
        randomize_batch_norm(net)
        for kept, merged in merges:
            share(net, kept, merged)
        path = tmp_path / "21_push0.7853.pth"
        torch.save(net, path)
        optimizer = torch.optim.Adam(net.parameters())  # the sidecar save.py writes beside each model
        torch.save({"joint_optimizer": optimizer, "warm_optimizer": optimizer, "last_layer_optimizer": None},
                   tmp_path / "21_push0.7853_optims.pth")
    assert_not_importable("model", "resnet_features")
    return path, net


def test_protopshare_pickle_with_merged_prototypes(tmp_path):
    path, net = write_protopshare(tmp_path)
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.float)
    assert torch.equal(net.prototype_class_identity, expected) and net.last_layer.in_features == 6
    adapter = get_adapter("auto").load(str(path))
    assert adapter.name == "protopshare" and torch.equal(adapter.prototype_class_identity, expected)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_parity(adapter, x, slow_ppnet(net, x), (2, 4, 4, 4))
    with pytest.raises(CheckpointError, match="holds a ProtoPShare checkpoint, not 'protopnet': "
                                              "run with --adapter protopshare"):
        get_adapter("protopnet").load(str(path))


@pytest.mark.parametrize("merges, own_constructor", [
    (((0, 1),), False),  # merged within class 0: one-hot identity, but the merge's torch.Size shape
    ((), True),  # built by ProtoPShare's own constructor (thresholds, binarizer), nothing merged yet
])
def test_protopshare_is_told_by_its_marks(tmp_path, merges, own_constructor):
    path, net = write_protopshare(tmp_path, merges, own_constructor)
    adapter = get_adapter("auto").load(str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert adapter.name == "protopshare" and torch.allclose(outputs(adapter, x)[1], slow_ppnet(net, x)[1], **TOL)


def test_protopshare_state_dict_and_optimizers_are_refused(tmp_path):
    path, net = write_protopshare(tmp_path)
    with pytest.raises(CheckpointError, match="refusing to load .*torch.optim"):
        get_adapter("auto").load(str(tmp_path / "21_push0.7853_optims.pth"))
    state = tmp_path / "weights.pth"
    torch.save(net.state_dict(), state)
    with pytest.raises(CheckpointError, match="state dict, which does not record which classes .*whole-model pickle"):
        get_adapter("protopshare").load(str(state))
    with pytest.raises(CheckpointError, match="say which with --adapter protopnet or --adapter tesnet"):
        get_adapter("auto").load(str(state))  # its keys are ProtoPNet's


def test_a_complex_identity_does_not_break_telling_the_family(tmp_path):
    with original_modules(tmp_path / "src", "protopnet") as m:  # complex numbers have no order: no "sum > 1"
        net = m.PPNet(m.VGG_features([4, "M"]), 4, (6, 4, 1, 1), 3)
        net.prototype_class_identity = net.prototype_class_identity.to(torch.complex64)
        torch.save(net, tmp_path / "odd.pth")
    assert detect_family(read_family_checkpoint(str(tmp_path / "odd.pth"))) == "protopnet"


def test_an_unmerged_protopnet_pickle_is_protopnet_s(tmp_path):
    path, _ = write_protopshare(tmp_path, merges=())
    assert get_adapter("auto").load(str(path)).name == "protopnet"
    with pytest.raises(CheckpointError, match="holds a ProtoPNet checkpoint, not 'protopshare': run with --adapter "
                                              "protopnet"):
        get_adapter("protopshare").load(str(path))


# ---------------------------------------------------------------- --adapter auto among them


@pytest.mark.parametrize("write, family", [
    (lambda tmp: write_deformable(tmp)[0], "deformable"),
    (lambda tmp: write_st(tmp, "full", "vgg")[0], "stprotopnet"),
    (lambda tmp: write_ppnet(tmp)[0], "protopnet"),
    (lambda tmp: write_ppnet(tmp, family="tesnet")[0], "tesnet"),
])
def test_each_original_file_has_one_claimant(tmp_path, write, family):
    assert detect_family(read_family_checkpoint(str(write(tmp_path)))) == family


def test_two_narrower_claims_on_one_pickle_ask_which(tmp_path):
    path, _ = write_deformable(tmp_path, thresholds=torch.zeros(1, 6))  # offsets, and a ProtoPShare attribute
    with pytest.raises(CheckpointError, match="pickled model.PPNet that Deformable ProtoPNet and ProtoPShare share.*"
                                              "say which with --adapter deformable or --adapter protopshare"):
        get_adapter("auto").load(str(path))
    assert get_adapter("deformable").load(str(path)).name == "deformable"


@pytest.mark.parametrize("write, family", [
    (write_deformable, "deformable"), (lambda tmp: write_st(tmp, "full", "vgg"), "stprotopnet"),
    (write_protopshare, "protopshare")])
def test_the_cli_benchmarks_and_converts_the_original_files(tmp_path, write, family):
    path = write(tmp_path)[0]
    data = write_image_folder(tmp_path / "data", classes=3, per_class=1, size=32)
    result = invoke("evaluate", "--ckpt", path, "--data", data, "--out", tmp_path / "out", "--steps", 2,
                    "--adapter-option", "img_size=32")
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(tmp_path / "out" / "per_image.csv")
    assert len(per_image) == 3 and per_image[["PLC", "PRC"]].notna().all().all()
    result = invoke("convert", path, tmp_path / "m.safetensors", "--adapter-option", "img_size=32")
    assert result.exit_code == 0 and f"({family}:" in result.stdout, result.output
    listed = invoke("adapters")
    assert listed.exit_code == 0 and family in listed.stdout
