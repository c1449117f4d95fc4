"""ProtoPShare (Rymarczyk et al., "ProtoPShare: Prototypical Parts Sharing for Similarity
Discovery in Interpretable Image Classification", KDD 2021).

Origin: github.com/gmum/ProtoPShare (MIT). ProtoPShare continues training a ProtoPNet and merges
prototypes whose activations on the push set are close: the kept prototype i takes the sum of
the merged last-layer columns and the union of their classes,

    W[:, i] = sum_j W[:, j]          identity[i] = max_j identity[j]   (multi-hot)

over i and the prototypes j merged into it. Its forward is ProtoPNet's, unchanged, so this
adapter is ProtoPNet's with the class identity the pickle records. The original saves the
whole model, `torch.save(model)` of `model.PPNet` (ProtoPNet's class name), never a state dict.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from protobench.adapters.protopnet import ProtoPNet, ProtoPNetAdapter, backbone_classes
from protobench.checkpoints.loading import Checkpoint
from protobench.errors import CheckpointError
from protobench.models.adapter import FamilyFacts
from protobench.models.families import FAMILIES

SHARE_ATTRIBUTES = ("thresholds", "take_best_prototypes")  # set by ProtoPShare's constructor, not ProtoPNet's


def shared_signature(attributes: dict[str, Any]) -> bool:
    """Whether a pickled PPNet bears ProtoPShare's marks: its own attributes (a model built by its
    code), or a merge: a multi-hot identity, or the torch.Size prototype_shape every merge writes
    (ProtoPNet writes a tuple, and a list when it prunes)."""
    modules = attributes.get("_modules") or {}
    if any(name in attributes for name in SHARE_ATTRIBUTES) or "binarizer" in modules:
        return True
    identity = attributes.get("prototype_class_identity")
    if isinstance(identity, torch.Tensor) and identity.dim() == 2 and not identity.is_complex() \
            and bool((identity.sum(dim=1) > 1).any()):
        return True
    return isinstance(attributes.get("prototype_shape"), torch.Size)


@FAMILIES.register("protopshare")
class ProtoPShareAdapter(ProtoPNetAdapter):
    """ProtoPShare: ProtoPNet with merged prototypes, each belonging to one or more classes."""

    facts = FamilyFacts(
        display_name="ProtoPShare", paper="Rymarczyk et al., KDD 2021", origin="https://github.com/gmum/ProtoPShare",
        commit="57ec642", license="MIT, (c) 2021 GMUM",
        files="whole pickle `torch.save(model)` of `model.PPNet` after merging (`{epoch}_push{acc}.pth`, "
              "`{epoch}push{acc}.pth`); not the `_optims.pth` beside it",
        root_classes=("model.PPNet",), pickled_classes=backbone_classes(""), refines=("protopnet",))

    @classmethod
    def claims_pickle(cls, attributes: dict[str, Any], keys: frozenset[str]) -> bool:
        return shared_signature(attributes)

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:
        return False  # a state dict has ProtoPNet's keys and lacks the merged identity

    @classmethod
    def tiny(cls, seed: int = 0) -> ProtoPShareAdapter:
        """ProtoPNet's tiny model after one merge: prototype 2 (class 1) into prototype 1 (class 0)."""
        base = ProtoPNetAdapter.tiny(seed).model
        keep = [j for j in range(base.cfg.num_prototypes) if j != 2]
        identity = base.prototype_class_identity.clone()
        identity[1] = identity[[1, 2]].amax(dim=0)
        weight = base.last_layer.weight.detach().clone()
        weight[:, 1] += weight[:, 2]
        model = ProtoPNet(replace(base.cfg, num_prototypes=len(keep)), identity=identity[keep])
        model.load_state_dict({**base.state_dict(), "prototype_vectors": base.prototype_vectors.detach()[keep],
                               "ones": base.ones[keep], "last_layer.weight": weight[:, keep],
                               "prototype_class_identity": identity[keep]})
        return cls(model)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, **options: Any) -> ProtoPShareAdapter:
        if not ckpt.is_protobench and ckpt.root is None:  # said before telling the family, which it cannot
            raise CheckpointError(f"{ckpt.path} is a state dict, which does not record which classes ProtoPShare's "
                                  "merged prototypes belong to: load the whole-model pickle the original saves")
        return super().from_checkpoint(ckpt, **options)

    @classmethod
    def from_original(cls, ckpt: Checkpoint, **options: Any) -> ProtoPShareAdapter:
        identity = ckpt.root.__dict__.get("prototype_class_identity")
        if isinstance(identity, torch.Tensor) and identity.dim() == 2 and not bool(
                ((identity == 0) | (identity == 1)).all() and (identity.sum(dim=1) >= 1).all()):
            raise CheckpointError(f"{ckpt.path}: prototype_class_identity is not 0/1 with at least one class "
                                  "per prototype")
        return super().from_original(ckpt, **options)
