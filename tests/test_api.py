"""The Python API gives the CLI's numbers and files, bit for bit, for a checkpoint file, a wrapped module
of an original family and a shuffled DataLoader; Results, compare, report and finetune from Python."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import protobench
from originals import original_modules
from protobench.cli.app import app

STEPS = ("--steps", "3", "--device", "cpu")
VARYING = ("date", "command", "wall_time_s", "images_per_s", "git")  # meta.json fields of when and how it was run


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def same_run(cli_dir, api_dir, files=("per_image.csv", "summary.csv")):
    for name in files:
        assert (cli_dir / name).read_bytes() == (api_dir / name).read_bytes(), name


def same_meta(cli_dir, api_dir):
    a, b = (json.loads((d / "meta.json").read_text()) for d in (cli_dir, api_dir))
    for key in VARYING:
        a.pop(key, None), b.pop(key, None)
    assert a == b


def test_import_protobench_imports_no_torch():
    code = "import sys, protobench; dir(protobench); protobench.__all__; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_every_public_name_resolves_with_a_docstring():
    for name in protobench.__all__:
        value = getattr(protobench, name)
        if callable(value):
            assert value.__doc__, name
    assert set(protobench.__all__) <= set(dir(protobench))
    with pytest.raises(AttributeError):
        protobench.no_such_name  # noqa: B018


def test_a_checkpoint_file_gives_the_cli_numbers_and_files(tiny_ckpt, image_folder, tmp_path):
    cli("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "cli", *STEPS)
    results = protobench.evaluate(protobench.load(tiny_ckpt, device="cpu"), image_folder, steps=3,
                                  out=tmp_path / "api", progress=False)
    same_run(tmp_path / "cli", tmp_path / "api")
    same_meta(tmp_path / "cli", tmp_path / "api")
    pd.testing.assert_frame_equal(results.per_image, pd.read_csv(tmp_path / "cli" / "per_image.csv", engine="python"),
                                  check_exact=True)
    assert results.scores["images"] == 12 and results.dir == tmp_path / "api"
    assert results.meta["command"] == "protobench.evaluate (Python)"


def original_ppnet(m):
    """A ProtoPNet as its original code builds it (tests/originals.py: model.PPNet), 32 px, 3 classes."""
    torch.manual_seed(3)
    features = m.ResNet_features(m.BasicBlock, [1, 1, 1, 1], strides=(1, 2, 1, 1))
    return m.PPNet(features, 8, (6, 4, 1, 1), 3)


def test_a_wrapped_original_module_gives_the_cli_numbers_of_its_file(image_folder, tmp_path):
    with original_modules(tmp_path / "src", "protopnet") as m:
        net = original_ppnet(m).train()
        torch.save(net, tmp_path / "ppnet.pth")
        model = protobench.wrap(net)
        results = protobench.evaluate(model, image_folder, steps=3, out=tmp_path / "api", name="ppnet",
                                      progress=False)
    assert net.training, "wrap and evaluate leave the module in train mode"
    assert model.family == "protopnet"
    cli("evaluate", "--ckpt", tmp_path / "ppnet.pth", "--data", image_folder, "--out", tmp_path / "cli", *STEPS)
    same_run(tmp_path / "cli", tmp_path / "api")
    assert results.meta["checkpoint"].endswith(".PPNet") and results.meta["checkpoint_sha256"] is None


def test_a_wrapped_original_module_follows_its_training(image_folder, tmp_path):
    """The wrapped module is read again at each evaluation: a change of its weights shows."""
    with original_modules(tmp_path / "src", "protopnet") as m:
        net = original_ppnet(m)
        model = protobench.wrap(net)
        first = protobench.evaluate(model, image_folder, steps=1, progress=False)
        with torch.no_grad():
            net.prototype_vectors.mul_(0.5)
        second = protobench.evaluate(model, image_folder, steps=1, progress=False)
    assert not first.per_image["act_before"].equals(second.per_image["act_before"])


class Plain(torch.utils.data.Dataset):
    """A user's Dataset of (image, label): the folder's images in the model's format, nothing of protobench's."""

    def __init__(self, images):
        self.items = [images[i][:2] for i in range(len(images))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        x, y = self.items[i]
        return x.clone(), torch.tensor(y)


def test_a_shuffled_dataloader_gives_the_cli_numbers(tiny_ckpt, image_folder, tmp_path):
    cli("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "cli", *STEPS)
    model = protobench.load(tiny_ckpt, device="cpu")
    images = protobench.open_images(image_folder, model)
    ours = torch.utils.data.DataLoader(images, batch_size=5, shuffle=True)
    protobench.evaluate(model, ours, steps=3, out=tmp_path / "ours", progress=False)
    same_run(tmp_path / "cli", tmp_path / "ours")
    same_meta(tmp_path / "cli", tmp_path / "ours")
    expected = pd.read_csv(tmp_path / "cli" / "per_image.csv", engine="python").drop(columns="path")
    plain = Plain(images.images)
    for loader in (torch.utils.data.DataLoader(plain, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(s))
                   for s in (0, 1)):
        got = protobench.evaluate(model, loader, steps=3, progress=False).per_image
        assert got["path"].tolist() == [f"Plain[{i}]" for i in range(12)]
        pd.testing.assert_frame_equal(got.drop(columns="path"), expected, check_exact=True)


def test_limit_picks_the_cli_subset_from_a_dataset(tiny_ckpt, image_folder, tmp_path):
    cli("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "cli", "--limit", 5, *STEPS)
    model = protobench.load(tiny_ckpt, device="cpu")
    got = protobench.evaluate(model, Plain(protobench.open_images(image_folder, model).images), limit=5, steps=3,
                              progress=False).per_image
    expected = pd.read_csv(tmp_path / "cli" / "per_image.csv", engine="python")
    assert got["index"].tolist() == expected["index"].tolist() and len(got) == 5
    pd.testing.assert_frame_equal(got.drop(columns="path"), expected.drop(columns="path"), check_exact=True)


def test_save_compare_and_report(tiny_adapter, image_folder, tmp_path):
    net = tiny_adapter.model  # protobench's own model: wrapped without a copy
    results = protobench.evaluate(net, image_folder, steps=2, progress=False)
    assert results.dir is None and list(results.summary.columns[:2]) == ["model", "images"]
    saved = results.save(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == ["meta.json", "per_image.csv", "summary.csv"]
    assert protobench.Results.load(saved).per_image.equals(results.per_image)
    same = protobench.compare(results, saved)
    assert same.verdict == "ok" and same.regressions == 0 and "FAIL" not in set(same.table["status"])
    with torch.no_grad():
        net.prototype_vectors.mul_(0.5)  # another model: other maps, other numbers
    worse = protobench.evaluate(net, image_folder, steps=2, progress=False)
    zero = {name: 0.0 for name in ("PLC", "PAC", "PRC", "acc")}
    both = [protobench.compare(a, b, tol=zero) for a, b in ((results, worse), (worse, results))]
    assert {c.verdict for c in both} == {"ok", "regressed"}  # a metric that moved is worse one way round
    assert all((c.verdict == "regressed") == ("FAIL" in c.markdown()) for c in both)
    with pytest.raises(protobench.ProtobenchError, match="changed since"):
        results.report(tmp_path / "stale")  # the model's numbers are no longer the run's
    html = worse.report(tmp_path / "report", worst=1, best=1)
    assert html.is_file() and len(list(html.parent.glob("*.png"))) >= 3
    assert "in memory" in html.read_text()


def test_finetune_from_python(tiny_ckpt, image_folder, tmp_path):
    done = protobench.finetune(tiny_ckpt, image_folder, out=tmp_path / "ft", eval_data=image_folder, epochs=1,
                               last_epochs=1, batch_size=4, device="cpu", progress=False)
    assert isinstance(done.model, protobench.Model) and done.model.ckpt == str(tmp_path / "ft" / "model.safetensors")
    assert done.path == tmp_path / "ft" / "model.safetensors" and done.out == tmp_path / "ft"
    assert list(done.log["phase"]) == ["joint", "push", "last"]
    assert done.before.scores["model"] == "before" and done.after.scores["model"] == "after"
    with pytest.raises(protobench.OptionError, match="unexpected keyword"):
        protobench.finetune(tiny_ckpt, image_folder, out=tmp_path / "x", epoch=1)


class Custom(torch.nn.Module):
    """A custom architecture following the protocol: here, protobench's tiny ProtoPNet behind another class."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.img_size = inner, 32
        self.prototype_class_identity = inner.prototype_class_identity.clone()

    def forward(self, x):
        return self.inner(x)


def test_a_module_following_the_protocol_gives_its_family_numbers(tiny_adapter, image_folder):
    expected = protobench.evaluate(tiny_adapter, image_folder, steps=3, progress=False).per_image
    custom = protobench.wrap(Custom(tiny_adapter.model), mean=tiny_adapter.info.mean, std=tiny_adapter.info.std)
    assert custom.family == "" and custom.info.num_prototypes == 6
    got = protobench.evaluate(custom, image_folder, steps=3, progress=False).per_image
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
