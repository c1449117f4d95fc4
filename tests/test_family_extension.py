"""A new model family in one file: a toy family defined and registered here, with no edit anywhere
else, is read safely from its own whole-model pickles, told from its files by `--adapter auto`,
listed by `protobench adapters` and benchmarked end to end (docs/adapters.md)."""

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import write_image_folder
from protobench.errors import AdapterError, CheckpointError
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, FamilyFacts, ModelInfo
from protobench.models.families import FAMILIES
from protobench.cli.families import describe
from protobench.models.lookup import get_adapter
from protobench.models.family_adapter import FamilyAdapter, take_options
from test_cli import invoke

# The "original research code": a module `toymodel` whose classes only exist while a file is written
ORIGINAL = '''
import torch
from torch import nn


class ToyStem(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.pool = nn.MaxPool2d(4)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))


class ToyNet(nn.Module):
    def __init__(self, classes=3, per_class=2, dim=4, scale=1.0):
        super().__init__()
        self.stem = ToyStem(dim)
        self.protos = nn.Parameter(torch.randn(classes * per_class, dim))
        self.head = nn.Linear(classes * per_class, classes, bias=False)
        self.per_class, self.scale = per_class, scale  # outside the state dict: only the pickle has them

    def forward(self, x):
        maps = self.scale * torch.einsum("bdhw,pd->bphw", self.stem(x), self.protos)
        return maps, self.head(maps.amax(dim=(2, 3)))
'''


# ---------------------------------------------------------------- the family, as a plugin writes it


@dataclass
class ToyConfig:
    num_classes: int = 3
    num_prototypes: int = 6
    dim: int = 4
    per_class: int = 2
    scale: float = 1.0
    img_size: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class Stem(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, padding=1)

    def forward(self, x):
        return nn.functional.max_pool2d(torch.relu(self.conv(x)), 4)


class ToyProtoNet(nn.Module):
    """The family's forward, reimplemented: the same state-dict keys as toymodel.ToyNet."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = Stem(cfg.dim)
        self.protos = nn.Parameter(torch.randn(cfg.num_prototypes, cfg.dim))
        self.head = nn.Linear(cfg.num_prototypes, cfg.num_classes, bias=False)

    def forward(self, x):
        maps = self.cfg.scale * torch.einsum("bdhw,pd->bphw", self.stem(x), self.protos)
        return maps, self.head(maps.amax(dim=(2, 3)))


class ToyAdapter(FamilyAdapter):
    facts = FamilyFacts(display_name="ToyProto", paper="Nobody et al., TESTS 2025", origin="https://example.org/toy",
                        commit="0000000", license="CC0", files="torch.save(model) of toymodel.ToyNet, or a state dict",
                        root_classes=("toymodel.ToyNet",), pickled_classes=("toymodel.ToyStem",))
    config_class = ToyConfig
    model_class = ToyProtoNet

    @classmethod
    def claims_keys(cls, keys):
        return {"protos", "head.weight"} <= keys

    def __init__(self, model):
        cfg = model.cfg
        identity = torch.zeros(cfg.num_prototypes, cfg.num_classes)
        identity[torch.arange(cfg.num_prototypes), torch.arange(cfg.num_prototypes) // cfg.per_class] = 1
        super().__init__(model, ModelInfo(cfg.img_size, cfg.mean, cfg.std, cfg.num_classes, cfg.num_prototypes,
                                          "dot"), identity)

    @classmethod
    def tiny(cls, seed=0):
        torch.manual_seed(seed)
        return cls(ToyProtoNet(ToyConfig()))

    @classmethod
    def from_original(cls, ckpt, **options):
        opts = take_options(cls.name, options, cls.options)
        t = ckpt.tensors
        root = ckpt.root.__dict__ if ckpt.root is not None else {}  # the pickled attributes, if a whole model
        num_prototypes, dim = t["protos"].shape
        num_classes = int(t["head.weight"].shape[0])
        per_class = root.get("per_class", int(num_prototypes) // num_classes)
        cfg = ToyConfig(num_classes, int(num_prototypes), int(dim), per_class, root.get("scale", 1.0), opts["img_size"] or 32)
        return cls.from_weights(cfg, t, ckpt.path, original=True)


# ---------------------------------------------------------------- tests


@pytest.fixture
def toy_family():
    FAMILIES.add("toy", ToyAdapter)
    yield ToyAdapter
    FAMILIES.remove("toy")


@pytest.fixture
def original(tmp_path, monkeypatch):
    """A whole-model pickle and a state dict written by toymodel, which is gone afterwards;
    plus the original model's own outputs on a fixed batch."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "toymodel.py").write_text(ORIGINAL)
    sys.path.insert(0, str(tmp_path / "code"))
    try:
        import toymodel

        torch.manual_seed(0)
        net = toymodel.ToyNet(scale=3.0).eval()
        torch.save(net, tmp_path / "toy.pth")
        torch.save(net.state_dict(), tmp_path / "toy_state.pth")
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            expected = net(x)
    finally:
        sys.path.remove(str(tmp_path / "code"))
        sys.modules.pop("toymodel", None)
    assert importlib.util.find_spec("toymodel") is None  # protobench cannot import it, nor has to
    return tmp_path / "toy.pth", tmp_path / "toy_state.pth", x, expected


def test_unregistered_the_toy_pickle_is_refused(original):
    with pytest.raises(CheckpointError, match="refusing to load .*toymodel.Toy"):
        get_adapter("auto").load(str(original[0]))


def test_whole_model_pickle_loads_through_stand_ins(toy_family, original):
    path, _, x, (maps, logits) = original
    adapter = get_adapter("auto").load(str(path))
    assert type(adapter) is ToyAdapter and adapter.name == "toy" and "toymodel" not in sys.modules
    assert adapter.model.cfg.scale == 3.0  # read from the pickled attributes
    with torch.no_grad():
        got_maps, got_logits = adapter(x)
    assert torch.allclose(got_maps, maps, atol=1e-6) and torch.allclose(got_logits, logits, atol=1e-6)


def test_auto_tells_the_toy_state_dict_by_its_keys(toy_family, original):
    _, state_path, x, (maps, _) = original
    adapter = get_adapter("auto").load(str(state_path))
    with torch.no_grad():  # the state dict has no `scale`: the default, 1, instead of the pickle's 3
        assert type(adapter) is ToyAdapter and torch.allclose(3 * adapter(x)[0], maps, atol=1e-5)
    with pytest.raises(CheckpointError, match="holds a ToyProto checkpoint, not 'protopnet': run with --adapter toy"):
        get_adapter("protopnet").load(str(state_path))


def test_protobench_safetensors_round_trip(toy_family, tmp_path):
    path = tmp_path / "toy.safetensors"
    ToyAdapter.tiny(seed=1).save(str(path))
    loaded = get_adapter("auto").load(str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(ToyAdapter.tiny(seed=1)(x), loaded(x)))
    FAMILIES.remove("toy")  # the file names its family; unregistered, protobench says what to install
    with pytest.raises(AdapterError, match="written by adapter 'toy', which is not installed here"):
        get_adapter("auto").load(str(path))


def test_listed_by_protobench_adapters(toy_family):
    (row,) = [row for row in describe() if row["name"] == "toy"]
    assert row == {"name": "toy", "family": "ToyProto", "paper": "Nobody et al., TESTS 2025", "license": "CC0",
                   "finetune": "no", "source": "registered at run time"}
    result = invoke("adapters")
    assert result.exit_code == 0 and "ToyProto" in result.stdout


def test_the_benchmark_runs_end_to_end_from_the_cli(toy_family, original, tmp_path):
    data = write_image_folder(tmp_path / "data", classes=3, per_class=2, size=32)
    out = tmp_path / "out"
    result = invoke("evaluate", "--ckpt", original[0], "--data", data, "--out", out, "--steps", 2)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    per_image = pd.read_csv(out / "per_image.csv")
    assert meta["adapter"] == "toy" and meta["model_info"]["similarity"] == "dot" and len(per_image) == 6
    assert per_image[["PAC", "PLC", "PRC"]].notna().all().all()


def test_listing_the_families_imports_no_torch():
    code = ("import sys; from protobench.models.families import FAMILIES; import protobench.cli.app; "
            "names = FAMILIES.names(); assert 'torch' not in sys.modules, 'torch imported'; print(names)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in ("pipnet", "protopnet", "protopool", "prototree", "tesnet"))


def test_two_families_claiming_one_pickled_class_ask_which(toy_family, original):
    class Twin(ToyAdapter):  # inherits ToyAdapter's facts, so it claims toymodel.ToyNet too
        pass

    FAMILIES.add("twin", Twin)
    try:
        with pytest.raises(CheckpointError, match="pickled toymodel.ToyNet that toy and twin share .*"
                                                  "say which with --adapter toy or --adapter twin"):
            get_adapter("auto").load(str(original[0]))
        assert type(get_adapter("twin").load(str(original[0]))) is Twin
    finally:
        FAMILIES.remove("twin")
