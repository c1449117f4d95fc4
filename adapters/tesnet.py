"""TesNet (Wang et al., "Interpretable Image Recognition by Constructing Transparent
Embedding Space", ICCV 2021), reimplemented from its formulas.

Origin: github.com/JackeyWang96/TesNet (no license file; the code is based on ProtoPNet, MIT).
Its model class `model.TESNet` has ProtoPNet's attributes and state-dict keys, so this
adapter shares ProtoPNet's architecture code and replaces only the forward:

    z = add_on(features(x))                          (B, D, h, w), after a sigmoid
    A = conv2d(z, p / |p|)                           (B, P, h, w) projection on the unit basis vectors
    logits = last_layer(max_hw A)                    no bias, no log activation
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protobench.models.adapter import FamilyFacts, PrototypeAdapter
from protobench.models.families import FAMILIES
from protobench.adapters.protopnet import ProtoPNet, ProtoPNetAdapter, ProtoPNetConfig, backbone_classes
from protobench.core.precision import full_precision


class TesNet(ProtoPNet):
    distance = None  # a projection, no squared distance: the same arithmetic as the original's in every mode

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        basis = F.normalize(self.prototype_vectors, p=2, dim=1)  # unit norm over the D channels
        z = self.conv_features(x)
        with full_precision(z):
            projection = F.conv2d(z.float(), basis)  # (B, P, h, w)
        return projection, self.last_layer(projection.amax(dim=(2, 3)))


@FAMILIES.register("tesnet")
class TesNetAdapter(ProtoPNetAdapter):
    """TesNet: ProtoPNet's architecture, similarity = projection onto unit-norm prototypes.

    Its state dicts have ProtoPNet's keys, so it inherits ProtoPNet's key signature
    (`claims_keys`): `--adapter auto` then asks which of the two it is."""

    facts = FamilyFacts(
        display_name="TesNet", paper="Wang et al., ICCV 2021", origin="https://github.com/JackeyWang96/TesNet",
        commit="870a77a", license="no license file (the README says it is based on ProtoPNet)",
        files="whole pickle of `model.TESNet` with `models.*_features`, or its state dict",
        root_classes=("model.TESNet",), pickled_classes=backbone_classes("models."))
    model_class = TesNet

    @staticmethod
    def similarity_name(cfg: ProtoPNetConfig) -> str:
        return "projection"

    # TesNet trains with its own losses (orthogonality, subspace separation) and projects prototypes
    # by projection, not by ProtoPNet's distance: none of ProtoPNet's training hooks apply
    training_loss = PrototypeAdapter.training_loss
    push = PrototypeAdapter.push
    parameter_groups = PrototypeAdapter.parameter_groups
    training_schedule = None
