"""The demo model's source patches ship with the package (protobench/demo/protoshapes-sources.json): they are
what the search finds, a demo report uses them instead of searching, and nothing else does."""

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from protobench.cli.app import app
from protobench.demo import DEMO_CKPT, DEMO_DATA, DEMO_RECORD, DEMO_SOURCES, demo_checkpoint
from protobench.demo.shapes import ProtoShapes, export
from protobench.report.runs import Run
from protobench.report.sources import demo_sources, find_sources, nearest_patches, patch_boxes, search
from protobench.run.evaluate import load_adapter


class Searched(Exception):
    """nearest_patches was called."""


@pytest.fixture(scope="module")
def adapter():
    return load_adapter("auto", demo_checkpoint(), {}, torch.device("cpu"))


@pytest.fixture(scope="module")
def train(adapter):
    return ProtoShapes("train", adapter.info.mean, adapter.info.std)


@pytest.fixture(scope="module")
def shipped():
    return json.loads(DEMO_SOURCES.read_text(encoding="utf-8"))


def demo_run(tmp_path, **changes):
    """A run of the demo as `protobench evaluate` records it (the fields the source search reads)."""
    from protobench.checkpoints.formats import sha256

    meta = {"checkpoint_sha256": sha256(DEMO_CKPT), "dataset": DEMO_DATA, "split": "test", "distance": "float64",
            "max_image_pixels": 50_000_000, **changes}
    return Run(dir=tmp_path, model="demo", meta=meta, summary={}, per_image=None)


def never(*_, **__):
    raise Searched


def same_place(found, stored) -> bool:
    """The same image, cell, label and path; activations to 1e-5 and each box edge to 1 px, since the file
    was made on one CPU and another's kernels may round the map differently (docs/metrics.md, Reproducibility)."""
    a, b = (dict(vars(x)) if not isinstance(x, dict) else dict(x) for x in (found, stored))
    return (all(a[k] == b[k] for k in ("index", "cell", "label", "path"))
            and a["activation"] == pytest.approx(b["activation"], rel=1e-5)
            and all(abs(u - v) <= 1 for u, v in zip(a["box"], b["box"])) and len(a["box"]) == len(b["box"]) == 4)


def test_every_shipped_source_is_the_patch_its_training_pushed_the_prototype_onto(adapter, train, shipped):
    """scripts/train_demo.py records where push projected each prototype (protoshapes.json): the shipped
    image and cell are those, its label, path and weight the data's and the checkpoint's."""
    pushed = {p["prototype"]: p for p in json.loads(DEMO_RECORD.read_text())["pushed_patches"]}
    P = adapter.info.num_prototypes
    assert sorted(shipped["prototypes"], key=int) == [str(p) for p in range(P)]
    images = torch.stack([train[pushed[p]["image"]][0] for p in range(P)])
    with torch.no_grad():
        maps = adapter(images)[0]  # (P, P, h, w): image k is prototype k's
    width = maps.shape[-1]
    boxes = patch_boxes(adapter, train, {p: (pushed[p]["image"],) for p in range(P)})
    weight = adapter.model.last_layer.weight.detach()
    for p in range(P):
        entry, image = shipped["prototypes"][str(p)], pushed[p]["image"]
        cls = int(adapter.prototype_class_identity[p].argmax())
        assert (entry["index"], entry["cell"]) == (image, pushed[p]["row"] * width + pushed[p]["col"]), p
        assert entry["label"] == train.labels[image] == cls and entry["path"] == train.paths[image]
        assert entry["activation"] == pytest.approx(float(maps[p, p].max()), rel=1e-6)
        assert entry["activation"] == pytest.approx(float(maps[p, p].flatten()[entry["cell"]]), rel=1e-6)
        assert all(abs(u - v) <= 1 for u, v in zip(entry["box"], boxes[p])), p  # 1 px: another CPU's rounding
        assert entry["weight"] == float(weight[cls, p])


def test_the_shipped_sources_are_what_the_search_finds_now(adapter, train, shipped):
    found = search(adapter, train, [0, 7])  # the search code itself, over two classes' 600 training images
    assert sorted(found) == ["0", "7"] and all(same_place(found[p], shipped["prototypes"][p]) for p in found)


@pytest.mark.slow
def test_the_shipped_file_is_what_regenerating_it_writes(shipped):
    assert demo_sources(DEMO_CKPT) == shipped  # every prototype, all 1,800 training images


def test_a_demo_report_into_a_new_directory_takes_the_shipped_sources_without_searching(tmp_path, monkeypatch,
                                                                                          adapter, shipped):
    from protobench.report.runs import load_runs

    monkeypatch.setattr("protobench.report.sources.nearest_patches", never)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["evaluate", "--limit", "4", "--steps", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "finding the source patches" not in result.output
    cache = json.loads(next((out / "report").glob("prototype-sources-*.json")).read_text())
    assert cache["key"] == shipped["key"]  # the key of a real demo run is the shipped file's
    drawn = sorted(int(p) for p in cache["prototypes"])
    assert drawn and cache["prototypes"] == {str(p): shipped["prototypes"][str(p)] for p in drawn}
    html = (out / "report" / "report.html").read_text()
    for p in drawn:
        entry = shipped["prototypes"][str(p)]
        assert re.search(rf"training image {entry['index']} of the train split of protoshapes \(0*{entry['index']}"
                         r"\.png", html), p
    monkeypatch.setattr("protobench.demo.DEMO_SOURCES", tmp_path / "absent.json")  # the same prototypes searched
    run = load_runs([str(out)])[0][0]
    from_cache = find_sources(run, adapter, drawn, None, cache_dir=out / "report").found
    monkeypatch.setattr("protobench.report.sources.nearest_patches", nearest_patches)
    searched = find_sources(run, adapter, drawn, None).found
    assert sorted(searched) == sorted(from_cache) and all(same_place(searched[p], from_cache[p]) for p in drawn)


def test_the_shipped_sources_serve_their_own_key_only(tmp_path, monkeypatch, adapter, shipped):
    monkeypatch.setattr("protobench.report.sources.nearest_patches", never)
    found = find_sources(demo_run(tmp_path), adapter, [0, 11], None).found
    assert [found[p].index for p in (0, 11)] == [shipped["prototypes"][p]["index"] for p in ("0", "11")]
    for other in ({"checkpoint_sha256": "0" * 64}, {"distance": "float32"}):
        with pytest.raises(Searched):
            find_sources(demo_run(tmp_path, **other), adapter, [0], None)
    data = tmp_path / "exported"
    export(data, "train", n=12)  # the same images in an image folder: other data, another fingerprint
    with pytest.raises(Searched):
        find_sources(demo_run(tmp_path), adapter, [0], str(data))
    monkeypatch.setattr("protobench.run.provenance.dataset_fingerprint_of", lambda *_: {"sha256": "0" * 64})
    with pytest.raises(Searched):  # the demo's data changed
        find_sources(demo_run(tmp_path), adapter, [0], None)


@pytest.mark.parametrize("damage", ["truncated", "entry", "index", "box"])
def test_a_damaged_shipped_file_falls_back_to_the_search(tmp_path, monkeypatch, adapter, shipped, damage):
    import protobench.report.sources as sources

    stored = json.loads(json.dumps(shipped))
    if damage == "entry":
        stored["prototypes"]["0"]["box"] = "40 58 0 14"
    elif damage == "box":
        stored["prototypes"]["0"]["box"] = [40, 30, 0, 14]  # bottom above top: an empty patch
    elif damage == "index":
        stored["prototypes"]["0"]["index"] = 10**6  # no such training image
    text = json.dumps(stored)
    damaged = tmp_path / "sources.json"
    damaged.write_text(text[: len(text) // 2] if damage == "truncated" else text)
    monkeypatch.setattr("protobench.demo.DEMO_SOURCES", damaged)
    searched, real = [], sources.nearest_patches

    def spy(adapter, dataset, protos, batch_size=32):
        searched.append(list(protos))
        return real(adapter, dataset, protos, batch_size)

    monkeypatch.setattr("protobench.report.sources.nearest_patches", spy)
    found = find_sources(demo_run(tmp_path), adapter, [0, 7], None).found
    assert searched == ([[0, 7]] if damage == "truncated" else [[0]])  # 7 is still read where it is intact
    for p in (0, 7):
        entry = shipped["prototypes"][str(p)]
        assert same_place(found[p], entry)
