"""`--distance float32` against each original's own float32 arithmetic, bit for bit; the default float64
distance against the same formulas run in float64, within 1e-4.

The references below are the originals' prototype layers written out operation for operation (from
reading ProtoPNet's `_l2_convolution`, ProtoPool's `forward` and ProtoTree's `L2Conv2D`; no code copied):
float32 `conv2d(z**2, ones) + (-2 conv2d(z, p) + |p|^2)` (ProtoTree: `(x2 + p2) - 2 xp`), min pooling as
`-max_pool2d(-d)`, ProtoPool's and the focal fork's mean as `avg_pool2d`; CaBRNet's heads as
tests/cabrnet_reference.py writes them out. Prototypes sit next to latent patches of the test images, as after
a push, where float32 cancels and the two modes part.
"""

import pytest
import torch
import torch.nn.functional as F
from cabrnet_reference import cabrnet_reference

from protobench.errors import AdapterError
from protobench.models.families import FAMILIES
from protobench.models.lookup import get_adapter


def log_sim(d, eps=1e-4):
    return torch.log((d + 1) / (d + eps))


def expanded(z, p, ones):
    """ProtoPNet's _l2_convolution: relu(x2_patch_sum + (-2 xp + p2))."""
    x2_patch_sum = F.conv2d(z ** 2, ones)
    p2_reshape = torch.sum(p ** 2, dim=(1, 2, 3)).view(-1, 1, 1)
    intermediate = -2 * F.conv2d(z, p) + p2_reshape
    return F.relu(x2_patch_sum + intermediate)


def min_pool(d):
    return (-F.max_pool2d(-d, kernel_size=(d.size(2), d.size(3)))).view(d.size(0), -1)


def ppnet_reference(model, x, dtype):
    z = model.conv_features(x).to(dtype)
    d = expanded(z, model.prototype_vectors.to(dtype), model.ones.to(dtype))
    act = log_sim(min_pool(d))
    if model.cfg.focal:
        act = act - log_sim(F.avg_pool2d(d, kernel_size=(d.size(2), d.size(3))).view(d.size(0), -1))
    return log_sim(d), F.linear(act, model.last_layer.weight.to(dtype))


def protopool_reference(model, x, dtype):
    z = model.add_on_layers(model.features(x)).to(dtype)
    d = expanded(z, model.prototype_vectors.to(dtype), model.ones.to(dtype))
    avg = F.avg_pool2d(d, kernel_size=(d.size(2), d.size(3))).view(d.size(0), -1)
    presence = model.presence().to(dtype)  # the one-hot limit of its gumbel_softmax (docs/adapters.md)
    slots = (log_sim(torch.einsum("bp,cpn->bcn", min_pool(d), presence))
             - log_sim(torch.einsum("bp,cpn->bcn", avg, presence)))
    return log_sim(d) - log_sim(avg)[..., None, None], F.linear(slots.flatten(1), model.last_layer.weight.to(dtype))


def prototree_reference(model, x, dtype):
    """L2Conv2D in its order, then the tree's probability, node by node, in probability space."""
    z = model._add_on(model._net(x)).to(dtype)
    p = model.prototype_layer.prototype_vectors.to(dtype)
    d2 = F.conv2d(z ** 2, torch.ones_like(p)) + torch.sum(p ** 2, dim=(1, 2, 3)).view(-1, 1, 1) - 2 * F.conv2d(z, p)
    d = torch.sqrt(torch.abs(d2) + 1e-14)[:, model.branch_prototype]
    s = torch.exp(-min_pool(d))
    leaves = torch.softmax(model.leaf_dist_params.to(dtype), dim=1)

    def out(node):  # node >= 0 a branch (its index among the branches), < 0 the leaf -1 - node
        if node < 0:
            return leaves[-1 - node].expand(x.shape[0], -1)
        left, right = model.branch_children[node].tolist()
        return (1 - s[:, node:node + 1]) * out(left) + s[:, node:node + 1] * out(right)

    return torch.exp(-d), torch.log(out(0))


def reference_for(model):
    kind = type(model).__name__
    return {"ProtoPNet": ppnet_reference, "ProtoPool": protopool_reference, "ProtoTree": prototree_reference,
            "CaBRNetNet": cabrnet_reference}.get(kind)


def has_distance(adapter):
    return any(isinstance(getattr(type(m), "distance", None), str) for m in adapter.model.modules())


EXPANDED = [name for name in FAMILIES.names() if has_distance(get_adapter(name).tiny())]


def prototypes_of(model):
    for name in ("prototype_vectors", "prototype_layer.prototype_vectors", "classifier.prototypes"):
        try:
            return model.get_parameter(name)
        except AttributeError:
            continue
    raise AssertionError("no prototypes")


def latent(model, x):
    if hasattr(model, "extractor"):  # CaBRNet
        return model.extractor(x)
    return model.conv_features(x) if hasattr(model, "conv_features") else (
        model.add_on_layers(model.features(x)) if hasattr(model, "add_on_layers") else model._add_on(model._net(x)))


def pushed(adapter, x, seed=0):
    """Every prototype moved onto a latent patch of x, plus 1e-3 noise: distances near 0, as after a push."""
    gen = torch.Generator().manual_seed(seed)
    model = adapter.model
    with torch.no_grad():
        z = latent(model, x)
        p = prototypes_of(model)
        cells = torch.randint(0, z.shape[0] * z.shape[2] * z.shape[3], (p.shape[0],), generator=gen)
        for j, cell in enumerate(cells.tolist()):
            b, rest = divmod(cell, z.shape[2] * z.shape[3])
            p[j] = z[b, :, rest // z.shape[3], rest % z.shape[3], None, None] + 1e-3 * torch.randn(
                p.shape[1:], generator=gen)
    return adapter


def test_the_expanded_form_families_are_found_and_each_has_a_reference():
    assert {"protopnet", "protopshare", "protopool", "prototree", "cabrnet"} <= set(EXPANDED)
    for name in EXPANDED:
        assert reference_for(get_adapter(name).tiny().model) is not None, name


@pytest.mark.parametrize("family", EXPANDED)
def test_float32_mode_is_the_original_bit_for_bit_and_float64_is_within_1e_4(family):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    adapter = pushed(get_adapter(family).tiny(), x)
    model, reference = adapter.model, reference_for(adapter.model)
    with torch.no_grad():
        maps64, logits64 = adapter(x)
        adapter.set_distance("float32")
        maps32, logits32 = adapter(x)
        ref_maps32, ref_logits32 = reference(model, x, torch.float32)
        ref_maps64, ref_logits64 = reference(model, x, torch.float64)
    assert torch.equal(maps32, ref_maps32)
    assert torch.equal(logits32, ref_logits32)
    assert (maps64 - ref_maps64).abs().max() < 1e-4 and (logits64 - ref_logits64).abs().max() < 1e-4
    adapter.set_distance("float64")
    with torch.no_grad():
        assert torch.equal(adapter(x)[0], maps64)  # the mode switches back


def test_the_modes_part_near_pushed_prototypes():
    # ProtoPNet with 64 latent channels: |z|^2 about 16, as trained models have; at d ~ 1e-6 the float32
    # formula's cancellation, times the log's slope 1e4, is visible in the maps; float64 is exact there
    from conftest import tiny_config

    adapter = get_adapter("protopnet").from_config(tiny_config(prototype_dim=64), seed=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    pushed(adapter, x)
    with torch.no_grad():
        maps64 = adapter(x)[0]
        maps32 = adapter.set_distance("float32")(x)[0]
        exact = ppnet_reference(adapter.model, x, torch.float64)[0]
    assert (maps64 - exact).abs().max() < 1e-5
    assert (maps32 - exact).abs().max() > 100 * (maps64 - exact).abs().max()


def test_an_unknown_distance_is_refused():
    with pytest.raises(AdapterError, match="float64 or float32"):
        get_adapter("protopnet").tiny().set_distance("float16")


def paper_one_image(model, x, x_adv, p_star, size):
    """The paper's run_adversarial_test.py for one image, written out (float32 model, numpy maxima, PAC in
    float64 from Python floats, PLC from torch.quantile(q=0.9) on the bilinear map, IoU as a float32 ratio)."""
    import numpy as np

    with torch.no_grad():
        before = ppnet_reference(model, x[None], torch.float32)[0][0].numpy()  # (P, h, w)
        after = ppnet_reference(model, x_adv[None], torch.float32)[0][0].numpy()
    act_before = np.max(before.reshape(before.shape[0], -1), axis=-1)
    act_after = np.max(after.reshape(after.shape[0], -1), axis=-1)
    pac = (1 - float(act_after[p_star]) / float(act_before[p_star])) * 100

    def high(m):
        up = F.interpolate(torch.tensor(m).unsqueeze(0).unsqueeze(0), size=(size, size), mode="bilinear")[0, 0]
        return up > torch.quantile(up.flatten(), q=0.9, dim=-1)

    hb, ha = high(before[p_star]), high(after[p_star])
    iou = float((torch.sum(ha & hb) / torch.sum(ha | hb)).item())
    return int(np.argmax(act_before)), act_before[p_star], act_after[p_star], pac, 100 * (1 - iou)


def test_reference_protocol_in_float32_is_the_paper_s_code_bit_for_bit():
    # the paper's own code, on the attacked images protobench made (its noise outside the box; the attack side
    # is checked in test_regions.py and test_attack.py): activations, PAC and PLC agree to the last bit
    from protobench.core.protocol import EvalProtocol
    from protobench.run.benchmark import evaluate_batch
    from protobench.run.defaults import run_context
    from protobench.run.forward import model_forward

    adapter = get_adapter("protopnet").tiny(seed=3)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    pushed(adapter, x, seed=5).set_distance("float32")
    attacked = {}
    context = run_context(adapter.device, adapter.info.input_size, distance="float32")
    assert context.runtime.chunk == 1  # one image per model call, as the paper's code: a chunk moves float32's bits
    out = evaluate_batch(adapter, x, torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6), EvalProtocol.make("reference"),
                         model_forward(adapter, context.runtime),
                         on_outcome=lambda o, ids: attacked.update(x_adv=o.images_adv.detach()))
    for i in range(6):
        p_star, act_before, act_after, pac, plc = paper_one_image(adapter.model, x[i], attacked["x_adv"][i],
                                                                  int(out["proto"][i]), 32)
        assert int(out["proto"][i]) == p_star
        assert out["act_before"][i].item() == float(act_before) and out["act_after"][i].item() == float(act_after)
        assert out["PAC"][i].item() == pac and out["PLC"][i].item() == plc, i
