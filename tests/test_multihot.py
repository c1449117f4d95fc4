"""A prototype of several classes (ProtoPShare's merged prototypes): each of its classes owns it, in
the benchmark's selection and PRC and in finetune's choice of class prototypes (docs/adapters.md)."""

import torch

from protobench.metrics.PRC import prc
from protobench.models.lookup import get_adapter
from protobench.core.protocol import EvalProtocol
from protobench.run.benchmark import protect
from protobench.train.compensation import pick_class_prototypes

# ProtoPShare's tiny model: ProtoPNet's 6 prototypes (2 per class) with prototype 2 merged into 1
IDENTITY = [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]
Y = torch.tensor([0, 1, 2])


def test_the_merged_prototype_belongs_to_both_its_classes():
    adapter = get_adapter("protopshare").tiny()
    assert adapter.prototype_class_identity.tolist() == IDENTITY
    maps = torch.rand(3, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    attacked, p_star, in_class, _ = protect(adapter, maps, Y, EvalProtocol.make("default", select="gt-protos"))
    own = [[0, 1], [1, 2], [3, 4]]  # prototype 1 is class 0's and class 1's
    assert [torch.nonzero(row).flatten().tolist() for row in attacked] == own
    assert [torch.nonzero(row).flatten().tolist() for row in in_class] == own
    assert all(int(p) in mine for p, mine in zip(p_star, own))

    # PRC: after the attack prototype 1 outranks p* in every image; it is another class's only for class 2
    p_star = torch.tensor([0, 2, 3])
    before = torch.tensor([[5.0, 1, 5, 5, 1]] * 3)
    after = torch.tensor([[5.0, 9, 5, 5, 1]] * 3)
    assert prc(before, after, p_star, in_class).tolist() == [0, 0, 1]


def test_finetune_picks_the_merged_prototype_for_both_its_classes():
    identity = torch.tensor(IDENTITY, dtype=torch.float)
    gen = torch.Generator().manual_seed(0)
    picked = pick_class_prototypes(identity, Y.repeat(200), gen).view(200, 3)
    assert [sorted(set(picked[:, c].tolist())) for c in range(3)] == [[0, 1], [1, 2], [3, 4]]
