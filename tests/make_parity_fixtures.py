"""Write tests/parity/<family>/: a tiny checkpoint in the original code's own on-disk format and the maps
and logits the family's formula gives on a fixed input, worked out by the slow, obvious implementations
in tests/originals*.py and the tests beside them (loops over patches, prototypes and tree nodes), never
by protobench's adapters. tests/test_parity_fixtures.py loads each checkpoint with protobench in both
`--distance` modes and compares: a change that moves any family's numbers fails there.

    .venv/bin/python tests/make_parity_fixtures.py        (from the repository root; rewrites tests/parity/)

Only what is meant to move the numbers should ever need this: say why in the commit.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_evalprotopnet import write as write_evalprotopnet  # noqa: E402
from test_originals import (slow_pipnet, slow_ppnet, slow_protopool, write_pipnet, write_ppnet,  # noqa: E402
                            write_protopool, write_prototree)
from test_originals import preorder_branches  # noqa: E402
from test_originals_cnn import slow_deformable, slow_st, write_deformable, write_protopshare, write_st  # noqa: E402
from test_protovit import expected_maps, write_protovit  # noqa: E402

OUT = HERE / "parity"


def protopnet(tmp):
    path, net = write_ppnet(tmp)
    return path, {}, lambda x: slow_ppnet(net, x)


def protopshare(tmp):
    path, net = write_protopshare(tmp)
    return path, {}, lambda x: slow_ppnet(net, x)


def tesnet(tmp):
    path, net = write_ppnet(tmp, family="tesnet")

    def slow(x):
        z, p = net.latent(x), net.prototype_vectors[:, :, 0, 0]
        proj = torch.stack([(z * (p[j] / p[j].norm())[None, :, None, None]).sum(dim=1) for j in range(len(p))], 1)
        return proj, proj.amax(dim=(2, 3)) @ net.last_layer.weight.t()

    return path, {}, slow


def protopool(tmp):
    path, net = write_protopool(tmp)
    chosen = net.proto_presence.argmax(dim=1)
    presence = torch.zeros(net.proto_presence.shape)
    for c in range(presence.shape[0]):
        for n in range(presence.shape[2]):
            presence[c, chosen[c, n], n] = 1  # the deterministic limit of its gumbel_softmax (docs/adapters.md)
    return path, {"img_size": 32}, lambda x: slow_protopool(net, x, presence)


def pipnet(tmp):
    path, net = write_pipnet(tmp, "resnet", bias=True)
    return path, {"img_size": 32}, lambda x: slow_pipnet(net, x)


def prototree(tmp):
    directory, tree = write_prototree(tmp)
    branches = preorder_branches(tree._root)

    def slow(x):
        d = tree.distances(x)
        return torch.stack([torch.exp(-d[:, tree._out_map[b]]) for b in branches], dim=1), torch.log(tree(x))

    return directory / "model.pth", {"img_size": 32}, slow


def deformable(tmp):
    path, net = write_deformable(tmp)
    return path, {}, lambda x: slow_deformable(net, x)[:2]


def stprotopnet(tmp):
    path, net = write_st(tmp, "full", "vgg")
    return path, {"img_size": 32}, lambda x: slow_st(net, x, "full")


def protovit(tmp):
    path, net = write_protovit(tmp)

    def slow(x):
        logits, _, _, _, sim = net.slow(x)
        return expected_maps(net, sim), logits

    return path, {}, slow


def evalprotopnet(tmp):
    path, net = write_evalprotopnet(tmp)
    return path, {}, lambda x: tuple(t.float() for t in net.slow(x))


WRITERS = {f.__name__: f for f in (protopnet, protopshare, tesnet, protopool, pipnet, prototree, deformable,
                                   stprotopnet, protovit, evalprotopnet)}


def main() -> None:
    from protobench.models.lookup import get_adapter

    if OUT.exists():
        shutil.rmtree(OUT)
    for family, writer in WRITERS.items():
        torch.manual_seed(20)
        with tempfile.TemporaryDirectory() as tmp:
            path, options, slow = writer(Path(tmp))
            target = OUT / family
            target.mkdir(parents=True)
            shutil.copy(path, target / path.name)
            size = get_adapter(family).load(str(path), **options).info.input_size  # the input side only
            x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(21))
            with torch.no_grad():
                maps, logits = slow(x)
            torch.save({"x": x, "maps": maps.float().contiguous(), "logits": logits.float().contiguous(),
                        "file": path.name, "options": options}, target / "expected.pt")
            print(family, path.name, tuple(maps.shape), tuple(logits.shape))


if __name__ == "__main__":
    main()
