"""The catalogue of released models: `protobench zoo`, `evaluate --model`, and where files are looked for."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protobench.cli import app
from protobench.models.families import FAMILIES
from protobench.zoo import KINDS, catalogue, locate

runner = CliRunner()
FIXTURE = Path(__file__).parent / "fixtures" / "cabrnet" / "protopnet"


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250", **(env or {})})


def test_zoo_list_shows_every_entry():
    result = invoke("zoo", "list")
    assert result.exit_code == 0
    assert all(name in result.output for name in catalogue())
    assert f"{len(catalogue())} models" in result.output


def test_every_entry_is_complete_and_names_a_registered_family():
    for name, item in catalogue().items():
        assert item["family"] in FAMILIES or item["family"] == "auto", name
        assert item["source"]["kind"] in KINDS and item["source"].get("facts"), name
        for key in ("dataset", "split", "license", "place", "preprocessing", "crop"):
            assert item[key], (name, key)
        value = item["accuracy"]["value"]
        assert value is None and item["accuracy"]["note"] or 0 < value <= 100 and item["accuracy"]["source"], name
        for f in item["files"]:  # a checksum is given only where a host published one: never a guess
            assert f["sha256"] is None or len(f["sha256"]) == 64


def test_zoo_show_prints_the_entry_and_where_to_get_it(tmp_path):
    result = invoke("zoo", "show", "protovit-tiny-cub200", env={"PROTOBENCH_ZOO": str(tmp_path)})
    assert result.exit_code == 0
    assert '"value": 83.36' in result.output and "DeiT_Tiny_finetuned0.8336.pth" in result.output
    assert f"{tmp_path}/protovit-tiny-cub200" in result.output
    assert invoke("zoo", "show", "protovit-tiny").exit_code == 2


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_a_model_that_is_not_here_says_where_to_get_it_and_where_to_put_it(tmp_path, no_network):
    pytest.importorskip("huggingface_hub")
    for name, expected in (("cabrnet-protopool-cub200-resnet50", "zenodo.org/records/13736403"),
                           ("pipnet-cub200-convnext", "Google Drive"),
                           ("protovit-small-cub200", "add --download")):
        result = invoke("evaluate", "--model", name, "--data", tmp_path, "--zoo-dir", tmp_path / "zoo")
        assert result.exit_code == 2 and expected in result.output
        assert str(tmp_path / "zoo" / name) in result.output.replace("\n", "")


def test_a_hub_entry_in_the_cache_is_found_without_downloading(tmp_path, no_network):
    pytest.importorskip("huggingface_hub")
    snapshot = tmp_path / "hub" / "models--chiyum609--ProtoViT" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "DeiT_Tiny_finetuned0.8336.pth").write_bytes(b"x")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    ckpt, source = locate("protovit-tiny-cub200", tmp_path / "zoo")
    assert ckpt == "hf://chiyum609/ProtoViT/DeiT_Tiny_finetuned0.8336.pth@main"
    assert source["published_accuracy"]["value"] == 83.36 and not source["download"]


def test_evaluate_model_runs_a_cabrnet_directory_from_the_zoo_dir(tmp_path, no_network):
    from conftest import write_image_folder

    zoo = tmp_path / "zoo"
    shutil.copytree(FIXTURE, zoo / "cabrnet-protopnet-cub200-resnet50")
    data = write_image_folder(tmp_path / "data", classes=3, per_class=1, size=16)
    result = invoke("evaluate", "--model", "cabrnet-protopnet-cub200-resnet50", "--zoo-dir", zoo, "--data", data,
                    "--steps", 1, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    home = zoo / "cabrnet-protopnet-cub200-resnet50"
    assert meta["adapter"] == "cabrnet" and meta["source"]["zoo"] == "cabrnet-protopnet-cub200-resnet50"
    assert meta["checkpoint"] == str(home / "model_state.pth")  # the directory's main file: its sha256 is kept
    assert meta["checkpoint_sha256"] == hashlib.sha256((home / "model_state.pth").read_bytes()).hexdigest()
    assert meta["source"]["companions_sha256"]["model_arch.yml"] == \
        hashlib.sha256((home / "model_arch.yml").read_bytes()).hexdigest()
    report = invoke("report", tmp_path / "out")  # re-run from the verified checkpoint
    assert report.exit_code == 0, report.output
    assert meta["accuracy_check"] is None  # the catalogue has no published accuracy for it
    assert invoke("evaluate", "--model", "x", "--ckpt", data).exit_code == 2
