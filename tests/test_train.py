"""ProtoPNet's training loss against hand-worked values, push, and the one training loop running
ProtoPNet's phased schedule (warm-up, joint, push, last layer) as data."""

import math

import pytest
import torch

from conftest import tiny_config
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.errors import OptionError
from protobench.models.plan import Phase, Plan
from protobench.adapters._protopnet_training import LossWeights, loss_terms, push, schedule, training_loss
from protobench.train.trainer import fit

IDENTITY = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # prototypes 0, 1 -> class 0; 2, 3 -> class 1


def test_loss_terms_by_hand():
    min_d = torch.tensor([[1.0, 3.0, 0.5, 2.0], [4.0, 6.0, 2.0, 7.0]])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    weight = torch.tensor([[1.0, 2.0, -0.3, 0.4], [-0.5, 0.1, 3.0, -1.0]])  # (C, P)
    terms = loss_terms(min_d, logits, y, IDENTITY, weight, max_dist=8.0)
    # image 0: nearest own prototype 1.0, nearest other 0.5; image 1: own 2.0, other 4.0
    assert terms["cluster"].item() == pytest.approx(1.5)
    assert terms["separation"].item() == pytest.approx(2.25)
    assert terms["l1"].item() == pytest.approx(0.3 + 0.4 + 0.5 + 0.1)  # off-class weights only
    ce = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(ce + 0.8 * 1.5 - 0.08 * 2.25 + 1e-4 * 1.3, rel=1e-6)
    plain_ce = loss_terms(min_d, logits, y, IDENTITY, weight, 8.0, LossWeights(cluster=0, separation=0, l1=0))
    assert plain_ce["loss"].item() == pytest.approx(ce, rel=1e-6)


def test_cluster_saturates_at_max_dist_as_the_original():
    # (max_dist - d) * mask takes its max with the masked-out zeros: all own distances above max_dist -> max_dist
    min_d = torch.tensor([[9.0, 10.0, 1.0, 2.0]])
    terms = loss_terms(min_d, torch.zeros(1, 2), torch.tensor([0]), IDENTITY, torch.zeros(2, 4), max_dist=8.0)
    assert terms["cluster"].item() == 8.0
    assert terms["separation"].item() == 1.0


def test_training_loss_matches_distances_worked_out_patch_by_patch():
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=3)
    model = adapter.model
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        z = model.conv_features(x)  # (B, D, h, w)
        p = model.prototype_vectors[:, :, 0, 0]  # (P, D)
        d = ((z[:, None] - p[None, :, :, None, None]) ** 2).sum(dim=2)  # (B, P, h, w)
        min_d = d.flatten(2).min(dim=2).values
        own = model.prototype_class_identity[:, y].t().bool()
        cluster = torch.stack([min_d[b][own[b]].min() for b in range(4)]).mean()
        separation = torch.stack([min_d[b][~own[b]].min() for b in range(4)]).mean()
        ce = torch.nn.functional.cross_entropy(adapter(x)[1], y)
        terms = training_loss(model, x, y)
    assert terms["cluster"].item() == pytest.approx(cluster.item(), rel=1e-4)
    assert terms["separation"].item() == pytest.approx(separation.item(), rel=1e-4)
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert terms["l1"].item() == pytest.approx(0.5 * 6 * 2)  # -0.5 to each of the 2 other classes, 6 prototypes


def toy_data(n=10, classes=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % classes
    return torch.utils.data.TensorDataset(x, y, torch.arange(n))


def assert_prototypes_are_patches(model, dataset, expect_where=None):
    """Every prototype equals a latent patch of an image of its class, and the nearest one."""
    model.eval()
    k = model.prototype_vectors.shape[-1]
    proto_class = model.prototype_class_identity.argmax(dim=1)
    with torch.no_grad():
        for j, p in enumerate(model.prototype_vectors):
            best = None
            for x, y, index in dataset:
                if y != proto_class[j]:
                    continue
                z = model.conv_features(x[None])[0]
                for r in range(z.shape[1] - k + 1):
                    for c in range(z.shape[2] - k + 1):
                        dist = ((z[:, r:r + k, c:c + k] - p) ** 2).sum().item()
                        if best is None or dist < best[0]:
                            best = (dist, int(index), r, c)
            assert best[0] < 1e-9, f"prototype {j} is {best[0]} away from its nearest patch"
            if expect_where is not None:
                assert expect_where[j] == best[1:]


@pytest.mark.parametrize("prototype_size", [1, 2])
def test_push_projects_each_prototype_onto_its_nearest_own_class_patch(prototype_size):
    adapter = ProtoPNetAdapter.from_config(tiny_config(prototype_size=prototype_size), seed=0)
    data = toy_data()
    before = adapter.model.prototype_vectors.detach().clone()
    where = push(adapter.model, torch.utils.data.DataLoader(data, batch_size=3))
    assert not torch.equal(before, adapter.model.prototype_vectors)
    assert all(w is not None for w in where)
    assert_prototypes_are_patches(adapter.model, data, where)


def test_push_leaves_prototypes_of_unseen_classes_alone():
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=0)
    data = toy_data(n=4, classes=2)  # no image of class 2, which owns prototypes 4 and 5
    before = adapter.model.prototype_vectors.detach().clone()
    where = adapter.push(torch.utils.data.DataLoader(data, batch_size=4))
    assert where[4] is None and where[5] is None and where[0] is not None
    assert torch.equal(adapter.model.prototype_vectors[4:], before[4:])


RATES = dict(lr_features=1e-3, lr_add_on=3e-3, lr_prototypes=3e-3, lr_last=1e-3, weight_decay=1e-3, step_size=1)


def test_the_schedule_is_seeded_and_ends_with_exact_patches():
    plan = Plan(schedule(warm=1, joint=1, last=2, **RATES), batch_size=4, seed=5)

    def run():
        adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=5)
        pushed = []
        log = fit(adapter, toy_data(), plan, on_push=pushed.extend)
        return adapter, log, pushed

    (first, logs, pushed), (second, _, _) = run(), run()
    assert [row["phase"] for row in logs] == ["warm", "joint", "push", "last", "last"]
    assert logs[2]["pushed"] == 6 and len(pushed) == 6
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not first.model.training and all(p.requires_grad for p in first.model.parameters())
    # the last-layer epochs keep the backbone's batch-norm statistics: pushed prototypes stay exact patches
    assert_prototypes_are_patches(first.model, toy_data(), pushed)


def test_a_phase_trains_its_groups_only_and_a_frozen_backbone_keeps_its_statistics():
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=2)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    warm = Plan(schedule(warm=2, push=False, **RATES), batch_size=4)
    log = fit(adapter, toy_data(), warm)
    after = adapter.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {k for k in before if k.startswith("add_on_layers.")} | {"prototype_vectors"}
    assert [row["phase"] for row in log] == ["warm", "warm"] and log[0]["loss"] > 0


def test_a_plan_the_model_cannot_run_is_refused_before_training():
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=2)
    with pytest.raises(OptionError, match="phase 'joint' trains 'backbone'.*features, add_on, prototypes"):
        fit(adapter, toy_data(), Plan((Phase("joint", 1, {"backbone": 1e-3}),)))
    with pytest.raises(OptionError, match="names a phase twice"):
        fit(adapter, toy_data(), Plan((Phase("last", 1, {"last_layer": 1e-3}), Phase("last", 1, {"last_layer": 1e-4}))))


def test_adapter_training_loss_has_a_gradient_for_every_trainable_part(tiny_adapter):
    terms = tiny_adapter.training_loss(torch.randn(2, 3, 32, 32), torch.tensor([0, 2]))
    terms["loss"].backward()
    model = tiny_adapter.model
    for part in (model.features, model.add_on_layers, model.last_layer):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert model.prototype_vectors.grad.abs().sum() > 0


def test_adapters_without_training_support_say_so():
    from protobench.models.adapter import PrototypeAdapter
    from protobench.errors import AdapterError

    bare = PrototypeAdapter(torch.nn.Identity(), None, torch.eye(2))
    with pytest.raises(AdapterError, match="no training loss"):
        bare.training_loss(torch.zeros(1, 3, 8, 8), torch.tensor([0]))
    with pytest.raises(AdapterError, match="cannot push"):
        bare.push([])


def test_training_loss_returns_the_maps_and_logits_of_its_forward(tiny_adapter):
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    with torch.no_grad():
        terms = tiny_adapter.training_loss(x, y)  # eval mode: the same batch-norm statistics as adapter(x)
        maps, logits = tiny_adapter(x)
    assert torch.allclose(terms["maps"], maps, rtol=1e-5, atol=1e-6)
    assert torch.allclose(terms["logits"], logits, rtol=1e-5, atol=1e-6)
    assert terms["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
