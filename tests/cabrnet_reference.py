"""CaBRNet 1.2's decision heads written out in plain torch, operation for operation, in a given dtype.

From reading CaBRNet's similarity layers (core/utils/similarities.py), its ProtoPNet, ProtoPool and ProtoTree
classifiers (archs/*/decision.py) and its tree nodes (core/utils/tree.py); no code copied. Every tensor comes
from protobench's model (prototypes, last layer, slots, tree), the tree is walked node by node from the root,
and each prototype's similarity is picked by its own index (no pruning map): an implementation independent of
adapters/_cabrnet_heads.py, for `--distance float32` to be compared with bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def distances(cfg, z, p):
    """The squared distance of CaBRNet's similarity layer: cdist ** 2, or a Legacy layer's expanded form."""
    if cfg.cdist:  # ProtoPNetSimilarity, ProtoTreeSimilarity
        n, dim, h, w = z.shape
        vectors = torch.transpose(z.view((n, dim, -1)), 1, 2)  # (N, hw, D)
        d = torch.cdist(vectors, p.squeeze(3).squeeze(2)) ** 2  # (N, hw, P)
        return torch.transpose(d, 1, 2).view(n, -1, h, w)
    x2 = torch.conv2d(z ** 2, torch.ones_like(p))  # the summation kernel, (P, D, 1, 1) ones
    p2 = torch.sum(p ** 2, dim=(1, 2, 3)).view(-1, 1, 1)
    xp = torch.conv2d(z, p)
    if cfg.similarity == "exp":  # LegacyProtoTreeSimilarity
        return x2 + p2 - 2 * xp
    return x2 + (-2 * xp + p2)  # LegacyProtoPNetSimilarity


def to_similarity(cfg, d, log=False):
    if cfg.similarity == "log":  # LogDistance
        d = torch.relu(d)
        return torch.log((d + 1) / (d + cfg.stability))
    root = torch.sqrt(torch.abs(d) + cfg.stability)  # ExpDistance
    return -root if log else torch.exp(-root)


def protopnet(head, z, d):
    if head.cfg.compatibility:
        m = -F.max_pool2d(-d, kernel_size=(d.size(2), d.size(3))).view(-1, d.size(1))
        act = torch.log((m + 1) / (m + 1e-4))
    else:
        act = to_similarity(head.cfg, torch.min(d.flatten(start_dim=2), dim=2).values, log=head.cfg.similarity_log)
    return to_similarity(head.cfg, d), F.linear(act, head.last_layer.weight.to(d.dtype))


def protopool(head, z, d):
    slots = head.proto_slot_map.to(d.dtype)
    if head.cfg.compatibility:
        slots = torch.softmax(slots, dim=1)
        low = -F.max_pool2d(-d, kernel_size=(d.size(2), d.size(3))).flatten(start_dim=1)
        avg = F.avg_pool2d(d, kernel_size=(d.size(2), d.size(3))).flatten(start_dim=1)
    else:
        low = torch.min(d.flatten(start_dim=2), dim=2)[0]
        avg = torch.mean(d.flatten(start_dim=2), dim=2)
    log = head.cfg.similarity_log  # an ExpDistance layer's own log_probabilities: -sqrt, not exp(-sqrt)
    x = (to_similarity(head.cfg, torch.einsum("bp,cpn->bcn", low, slots), log=log)
         - to_similarity(head.cfg, torch.einsum("bp,cpn->bcn", avg, slots), log=log))
    return to_similarity(head.cfg, d), F.linear(x.flatten(start_dim=1), head.last_layer.weight.to(d.dtype))


def log1mexp(x):
    return torch.where(x < np.log(2), torch.log(-torch.expm1(-x)), torch.log1p(-torch.exp(-x)))


def prototree(head, z, d):
    """Similarity maps of every prototype, their maximum, then each BinaryNode: (1 - s) nsim + s sim, or in log
    space logsumexp(log1mexp(|s| + 1e-7) + nsim, s + sim). Maps: the live prototypes', as probabilities."""
    log = head.cfg.log_probabilities
    maps = to_similarity(head.cfg, d, log=head.cfg.similarity_log)
    best = torch.max(maps.view(maps.shape[:2] + (-1,)), dim=2)[0]  # (N, P)

    def leaf(i):
        x = head.leaves[i:i + 1].to(d.dtype)  # (1, C)
        return torch.log_softmax(x, dim=1) if log else torch.softmax(x - torch.max(x, dim=1)[0], dim=1)

    def node(k):
        nsim, sim = (node(c) if c >= 0 else leaf(-1 - c) for c in head.branch_children[k].tolist())
        s = best[:, [int(head.branch_prototype[k])]]
        if log:
            return torch.logsumexp(torch.stack([log1mexp(torch.abs(s) + 1e-7) + nsim, s + sim]), dim=0)
        return (1 - s) * nsim + s * sim

    out = node(0)
    shown = maps[:, head.live]
    return (shown.exp() if head.cfg.similarity_log else shown), (out if log else torch.log(out))


def cabrnet_reference(model, x, dtype):
    """(maps, logits) of a CaBRNet network (protobench's CaBRNetNet) from CaBRNet's formulas in `dtype`."""
    head = model.classifier
    z = model.extractor(x).to(dtype)
    d = distances(model.cfg, z, head.prototypes.to(dtype))
    return {"protopnet": protopnet, "protopool": protopool, "prototree": prototree}[model.cfg.head](head, z, d)
