"""`--adapter auto` between families that pickle the same class (`model.PPNet`: ProtoPNet, Deformable
ProtoPNet, ProtoPShare and ProtoViT) or share state-dict keys: a family claims a file by its
class name and a signature of its own, and the family it `refines` yields to it."""

import pytest
import torch
from torch import nn

from originals import original_modules
from protobench.errors import AdapterError, CheckpointError
from protobench.models.adapter import FamilyFacts
from protobench.models.families import FAMILIES
from protobench.models.detect import claimants, read_family_checkpoint
from protobench.models.lookup import get_adapter
from protobench.models.family_adapter import FamilyAdapter
from test_originals import write_ppnet


class PatchSelectAdapter(FamilyAdapter):
    """A family as ProtoViT is: ProtoPNet's pickled class, told by a parameter of its own (a toy one,
    `part_gate`: ProtoViT's own `patch_select` is taken)."""

    facts = FamilyFacts(display_name="PatchNet", paper="Nobody et al., TESTS 2025", root_classes=("model.PPNet",),
                        refines=("protopnet",))

    @classmethod
    def claims_pickle(cls, attributes, keys):
        return "part_gate" in keys


@pytest.fixture
def patchnet():
    FAMILIES.add("patchnet", PatchSelectAdapter)
    yield
    FAMILIES.remove("patchnet")


def claimed(path):
    return claimants(read_family_checkpoint(str(path)))


def test_a_family_plugs_in_beside_protopnet_by_a_signature(tmp_path, patchnet):
    plain, _ = write_ppnet(tmp_path / "plain")
    with original_modules(tmp_path / "src", "protopnet") as m:
        net = m.PPNet(m.VGG_features([4, "M"]), 4, (6, 4, 1, 1), 3)
        net.part_gate = nn.Parameter(torch.zeros(1, 6, 4))
        torch.save(net, tmp_path / "vit.pth")
    assert claimed(plain) == ("protopnet",)
    assert claimed(tmp_path / "vit.pth") == ("patchnet",)  # ProtoPNet claims it too, and yields
    with pytest.raises(CheckpointError, match="holds a PatchNet checkpoint, not 'protopnet': run with --adapter "
                                              "patchnet"):
        get_adapter("protopnet").load(str(tmp_path / "vit.pth"))


def test_a_state_dict_nobody_can_tell_apart_asks_which(tmp_path):
    _, net = write_ppnet(tmp_path, backbone="vgg")
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="state dict that ProtoPNet and TesNet share \\(identical keys\\); "
                                              "say which with --adapter protopnet or --adapter tesnet"):
        get_adapter("auto").load(str(tmp_path / "weights.pth"))


def test_a_malformed_refines_is_named(tmp_path):
    class Broken(PatchSelectAdapter):
        facts = FamilyFacts(display_name="Broken", paper="-", root_classes=("model.PPNet",), refines="protopnet")

        @classmethod
        def claims_pickle(cls, attributes, keys):
            return True

    path, _ = write_ppnet(tmp_path)
    FAMILIES.add("broken", Broken)
    try:
        with pytest.raises(AdapterError, match="'broken' declares refines wrongly"):
            get_adapter("auto").load(str(path))
    finally:
        FAMILIES.remove("broken")
