"""ProtoViT: its original pickles read without its code (or timm's), against the slow formula; its
greedy matching by hand; the benchmark end to end, with its own protocol (ProtoViT's copy of the
benchmark: token boxes, token-level PLC), against that copy's definitions computed independently."""

import json

import pandas as pd
import pytest
import torch

from conftest import write_image_folder
from originals import original_modules
from protobench.adapters.protovit import greedy_match
from protobench.models.convert import convert
from protobench.core import rng
from protobench.core.protocol import EvalProtocol
from protobench.errors import CheckpointError
from protobench.models.lookup import get_adapter
from protobench.run.benchmark import evaluate_batch
from protobench.run.forward import Runtime, frozen_eval, model_forward
from test_cli import invoke
from test_originals import assert_not_importable

TOL = dict(rtol=1e-4, atol=1e-5)


def write_protovit(tmp_path, arc="deit", dim=16, heads=2, img_size=56, patch=4, prototypes=12, edit=None,
                   layout="protovit"):
    """A tiny ProtoViT written as the original saves it: torch.save of model.PPNet with a timm backbone
    (14 x 14 tokens at 56 px, as the original's hard-coded grid); some slots pushed to exactly on/off."""
    with original_modules(tmp_path / "src", layout) as m:
        torch.manual_seed(0)
        build = m.VisionTransformer if arc == "deit" else m.Cait
        net = m.PPNet(build(m, img_size, patch, dim, 2, heads), img_size, (prototypes, dim, 4), 3, arc).eval()
        with torch.no_grad():
            net.patch_select.normal_(0, 0.05)
            net.patch_select[0, 3] = torch.tensor([200.0, -200.0, -200.0, 200.0])  # as after the original's push
            net.patch_select[0, 5] = -200.0  # every slot off: the activation is 0
            net.last_layer.weight.normal_()
        if edit:
            edit(net)
        path = tmp_path / "10finetuned0.8530.pth"
        torch.save(net, path)
        torch.save(net.state_dict(), tmp_path / "state.pth")
    assert_not_importable("model", "timm")
    return path, net


def expected_maps(net, sim):
    """Per token, the largest cosine of the sub-prototypes whose slot is at least 0.5 (all if none is)."""
    slots = torch.sigmoid(net.patch_select[0] * net.temp)
    b, p, n, k = sim.shape
    maps = torch.zeros(b, p, n)
    for j in range(p):
        counted = [part for part in range(k) if slots[j, part] >= 0.5] or list(range(k))
        maps[:, j] = sim[:, j][..., counted].amax(dim=-1)
    side = int(n ** 0.5)
    return maps.view(b, p, side, side)


@pytest.mark.parametrize("arc", ["deit", "cait"])
def test_original_pickle_equals_the_slow_formula(tmp_path, arc):
    path, net = write_protovit(tmp_path, arc)
    adapter = get_adapter("auto").load(str(path))  # a model.PPNet, told from ProtoPNet's by its slots
    assert adapter.name == "protovit"
    cfg = adapter.model.cfg
    assert (cfg.backbone, cfg.backbone_kwargs["num_heads"], cfg.radius, cfg.temp, cfg.num_parts) == (arc, 2, 1, 100, 4)
    assert adapter.info.input_size == 56 and adapter.info.mean == (0.485, 0.456, 0.406)
    assert torch.equal(adapter.prototype_class_identity, net.prototype_class_identity)
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        found = adapter.evidence(x)
        logits, act, values, tokens, sim = net.slow(x)
    assert torch.allclose(found.logits, logits, **TOL) and torch.allclose(found.activations, act, **TOL)
    assert torch.equal(found.cells, tokens) and (found.activations[:, 5] == 0).all()
    assert torch.allclose(found.parts, sim.permute(0, 1, 3, 2).reshape(3, 12, 4, 14, 14), **TOL)
    assert torch.allclose(found.maps, expected_maps(net, sim), **TOL)
    maps, logits_again = adapter(x.requires_grad_())  # forward: the maps shown and the logits
    assert torch.equal(logits_again, found.logits)
    logits_again.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    converted = convert(str(path), str(tmp_path / "protovit.safetensors"))  # checks the outputs itself
    assert converted["adapter"] == "protovit" and converted["max_abs_diff"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("arc, dim, depth, heads", [("deit", 384, 12, 6), ("cait", 192, 24, 4)])
def test_full_size_deit_small_and_cait_xxs24(tmp_path, arc, dim, depth, heads):
    """The released backbones' shapes at 224 px (DeiT-S: 6 heads, CaiT-XXS24: 4): 14 x 14 tokens."""
    with original_modules(tmp_path / "src", "protovit") as m:
        torch.manual_seed(0)
        build = m.VisionTransformer if arc == "deit" else m.Cait
        net = m.PPNet(build(m, 224, 16, dim, depth, heads), 224, (20, dim, 4), 10, arc).eval()
        with torch.no_grad():
            net.patch_select.normal_(0, 0.05)
        torch.save(net, tmp_path / "full.pth")
    adapter = get_adapter("protovit").load(str(tmp_path / "full.pth"))
    assert adapter.model.cfg.backbone_kwargs["num_heads"] == heads and adapter.model.features.grid_size == (14, 14)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        found = adapter.evidence(x)
        logits, act, _, tokens, _ = net.slow(x)
    assert found.maps.shape == (1, 20, 14, 14) and torch.equal(found.cells, tokens)
    assert torch.allclose(found.activations, act, rtol=1e-4, atol=1e-4)


def test_a_bare_state_dict_loads_with_the_original_settings(tmp_path):
    # no pickle: the class identity is the constructor's, temp and radius settings.py's; one head per 64 channels
    _, net = write_protovit(tmp_path, dim=64, heads=1)
    adapter = get_adapter("auto").load(str(tmp_path / "state.pth"))  # patch_select: no other family has it
    assert adapter.name == "protovit"
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(adapter.evidence(x).logits, net.slow(x)[0], **TOL)
    wider = get_adapter("protovit").load(str(tmp_path / "state.pth"), radius=3)  # an option, where the file is silent
    net.radius = 3
    with torch.no_grad():
        assert torch.equal(wider.evidence(x).cells, net.slow(x)[3])


def test_protopnet_s_class_name_is_not_enough(tmp_path):
    """ProtoViT pickles model.PPNet as ProtoPNet does: --adapter protopnet names the family it is,
    and ProtoPNet's own pickles still load as ProtoPNet."""
    from test_originals import write_ppnet

    path, _ = write_protovit(tmp_path / "vit")
    with pytest.raises(CheckpointError, match="holds a ProtoViT checkpoint, not 'protopnet': run with --adapter "
                                              "protovit"):
        get_adapter("protopnet").load(str(path))
    ppnet, _ = write_ppnet(tmp_path)
    assert get_adapter("auto").load(str(ppnet)).name == "protopnet"
    with pytest.raises(CheckpointError, match="holds a ProtoPNet checkpoint, not 'protovit': run with --adapter "
                                              "protopnet"):
        get_adapter("protovit").load(str(ppnet))


def test_greedy_matching_by_hand():
    # 3 x 3 tokens, 2 sub-prototypes. The best pair is (token 8, part 1): 0.95. Part 0 is best at token 0
    # (0.9), but the next token must lie next to token 8: of 4, 5, 7 its best is token 4 (0.5).
    sim = torch.full((1, 1, 9, 2), -1.0)
    sim[0, 0, [0, 4, 5, 7], 0] = torch.tensor([0.9, 0.5, 0.2, 0.1])
    sim[0, 0, 8, 1] = 0.95
    values, cells = greedy_match(sim, (3, 3), radius=1)
    assert values.tolist() == [[[0.5, pytest.approx(0.95)]]] and cells.tolist() == [[[4, 8]]]
    values, cells = greedy_match(sim, (3, 3), radius=2)  # everything is near: part 0 takes token 0
    assert cells.tolist() == [[[0, 8]]] and values[0, 0, 0].item() == pytest.approx(0.9)


@pytest.mark.parametrize("edit, message", [
    (lambda net: setattr(net, "radius", -1), "radius -1 should be an integer in 0..2048"),
    (lambda net: setattr(net, "temp", float("nan")), "temp nan should be a number"),
    (lambda net: setattr(net, "arc", "cait"), "backbone must be a DeiT or CaiT transformer; this one is deit"),
    (lambda net: setattr(net.features.blocks[0].attn, "num_heads", 5), "embed_dim 16 is not divisible by num_heads 5"),
])
def test_malformed_pickles_are_one_line_errors(tmp_path, edit, message):
    path, _ = write_protovit(tmp_path, edit=edit)
    with pytest.raises(CheckpointError, match=message):
        get_adapter("protovit").load(str(path))


def token_boxes(cells, side, size):
    """ProtoViT's copy: mask[s r : s (r + 1) - 1, s c : s (c + 1) - 1] = 0 for each token (r, c), s = size / side."""
    s = size // side
    mask = torch.ones(size, size, dtype=torch.bool)
    for cell in cells:
        r, c = divmod(int(cell), side)
        mask[s * r:s * (r + 1) - 1, s * c:s * (c + 1) - 1] = False
    return mask


def protovit_copy_metrics(net, x, y, noise):
    """Its benchmark copy on one batch, one image at a time, from the slow model: p* = the most active
    prototype, its token boxes protected, eps 0.4 noise elsewhere (no clip), PAC / PRC on the greedy
    activations, PLC on the >= 90%-quantile tokens of each sub-prototype's cosine map, gated."""
    _, act, _, tokens, sim = net.slow(x)
    act = act.clamp(min=0)
    rows = []
    for i in range(len(x)):
        p = int(act[i].argmax())
        mask = token_boxes(tokens[i, p], 14, 56)
        x_adv = torch.where(mask, x[i] + 0.4 * noise[i], x[i])
        _, act_adv, _, tokens_adv, sim_adv = net.slow(x_adv[None])
        act_adv = act_adv[0].clamp(min=0)
        others = net.prototype_class_identity[:, y[i]] == 0
        prc = int(((act_adv > act_adv[p]) & others).sum()) - int(((act[i] > act[i, p]) & others).sum())
        before = torch.stack([sim[i, p, :, k] >= torch.quantile(sim[i, p, :, k], 0.9) for k in range(4)])
        after = torch.stack([sim_adv[0, p, :, k] >= torch.quantile(sim_adv[0, p, :, k], 0.9) for k in range(4)])
        moved = any(t not in tokens_adv[0, p].tolist() for t in tokens[i, p].tolist())
        plc = 100 * (1 - (before & after).sum().item() / (before | after).sum().item()) if moved else 0.0
        rows.append({"proto": p, "PAC": 100 * (1 - act_adv[p].item() / act[i, p].item()), "PRC": prc, "PLC": plc,
                     "protected_frac": 1 - mask.float().mean().item()})
    return pd.DataFrame(rows)


def test_the_protovit_protocol_equals_its_benchmark_copy(tmp_path):
    path, net = write_protovit(tmp_path)
    adapter = get_adapter("protovit").load(str(path))
    x = torch.randn(4, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    y, ids = torch.tensor([0, 1, 2, 0]), torch.arange(4)
    protocol = EvalProtocol.make("protovit", seed=5)
    with frozen_eval(adapter.model):
        got = evaluate_batch(adapter, x, y, ids, protocol, model_forward(adapter, Runtime()))
    noise = rng.uniform(5, ids, (3, 56, 56), -1.0, 1.0)  # the run's documented random start
    with torch.no_grad():
        expected = protovit_copy_metrics(net, x, y, noise)
    assert got["proto"].tolist() == expected["proto"].tolist()
    assert torch.allclose(got["protected_frac"], torch.tensor(4 * 9 / 56 ** 2).expand(4))  # four 3 x 3 px boxes
    assert torch.allclose(got["protected_frac"].double(), torch.tensor(expected["protected_frac"].values), atol=1e-6)
    for metric in ("PAC", "PRC", "PLC"):
        want = torch.tensor(expected[metric].values, dtype=torch.float64)
        assert torch.allclose(got[metric].double(), want, atol=1e-3), metric
    assert (got["zero_grad_steps"] == 0).all()  # noise takes no steps, so none can have a zero gradient


def test_the_whole_benchmark_runs_from_the_cli_on_the_original_file(tmp_path):
    path, _ = write_protovit(tmp_path)
    data = write_image_folder(tmp_path / "data", classes=3, per_class=2, size=56)
    for protocol in ("protovit", "default"):
        out = tmp_path / protocol
        result = invoke("evaluate", "--ckpt", path, "--data", data, "--out", out, "--protocol", protocol, "--steps", 2)
        assert result.exit_code == 0, result.output
        meta = json.loads((out / "meta.json").read_text())
        per_image = pd.read_csv(out / "per_image.csv")
        assert meta["adapter"] == "protovit" and meta["model_info"]["similarity"] == "greedy-cosine"
        assert len(per_image) == 6 and per_image[["PAC", "PLC", "PRC"]].notna().all().all()
        region = (meta["protocol"]["region"], meta["protocol"]["plc"], meta["protocol"]["margin"])
        # the box's margin is 10 px at 224, scaled to 2 px at 56
        assert region == (("tokens", "tokens", 0) if protocol == "protovit" else ("box", "pixels", 2))
    result = invoke("compare", tmp_path / "default", tmp_path / "protovit")
    assert result.exit_code == 2 and "protocol.region" in " ".join(result.stderr.split())
    listed = invoke("adapters")
    assert listed.exit_code == 0 and "protovit" in listed.stdout and "ProtoViT" in listed.stdout
