"""The prototype side of the report: source patches found by one batched pass, checked by brute force."""

import json

import torch

from conftest import tiny_config, write_image_folder
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.report.runs import Run
from protobench.report.sources import cache_file, connection_weights, find_sources, nearest_patches
from protobench.run.evaluate import load_dataset


def brute_force(adapter, dataset, proto):
    """The training patch nearest to `proto` in latent space among the images of its class: every image,
    every cell, one squared distance at a time."""
    model = adapter.model
    vector = model.prototype_vectors[proto].flatten()
    own = int(adapter.prototype_class_identity[proto].argmax())
    best = (float("inf"), None, None)
    with torch.no_grad():
        for i in range(len(dataset)):
            x, label, index = dataset[i]
            if label != own:
                continue
            z = model.conv_features(x[None])[0]  # (D, h, w)
            for r in range(z.shape[1]):
                for c in range(z.shape[2]):
                    d = float(((z[:, r, c].double() - vector.double()) ** 2).sum())
                    if d < best[0]:
                        best = (d, index, r * z.shape[2] + c)
    return best[1:]


def test_the_source_patch_is_the_nearest_training_patch_of_the_prototype_s_class(tmp_path):
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=0)
    data = write_image_folder(tmp_path / "train", per_class=5)
    dataset, _ = load_dataset(data, adapter.info)
    protos = list(range(adapter.info.num_prototypes))
    found = nearest_patches(adapter, dataset, protos, batch_size=4)  # several batches
    for p in protos:
        assert found[p][:2] == brute_force(adapter, dataset, p), p


def test_sources_are_cached_in_the_report_directory_and_searched_again_only_when_missing(tmp_path, monkeypatch):
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=0)
    data = write_image_folder(tmp_path / "train", per_class=3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = Run(dir=run_dir, model="tiny", meta={"checkpoint_sha256": "abc", "dataset": data}, summary={},
              per_image=None)
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    first = find_sources(run, adapter, [0, 3], data, cache_dir=report_dir)
    assert first.training and sorted(first.found) == [0, 3]
    assert list(run_dir.iterdir()) == []  # nothing written outside the report's directory
    cached = json.loads(cache_file(run, report_dir).read_text())
    assert sorted(cached["prototypes"]) == ["0", "3"]
    searched = []
    real = nearest_patches

    def spy(adapter, dataset, protos, batch_size=32):
        searched.append(list(protos))
        return real(adapter, dataset, protos, batch_size)

    monkeypatch.setattr("protobench.report.sources.nearest_patches", spy)
    again = find_sources(run, adapter, [0, 3, 4], data, cache_dir=report_dir)
    assert searched == [[4]]  # 0 and 3 came from the cache
    assert again.found[0] == first.found[0] and again.found[3] == first.found[3]
    top, bottom, left, right = again.found[4].box
    assert 0 <= top < bottom <= 32 and 0 <= left < right <= 32


def test_without_training_data_the_evaluated_data_is_searched_and_said_so(tmp_path):
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=0)
    data = write_image_folder(tmp_path / "test")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = Run(dir=run_dir, model="tiny", meta={"checkpoint_sha256": "abc", "dataset": data}, summary={},
              per_image=None)
    sources = find_sources(run, adapter, [1], None)
    assert not sources.training and str(data) in sources.where


def test_the_class_connection_weight_is_the_last_layer_s():
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=0)
    weights = connection_weights(adapter)
    assert weights.shape == (3, 6)
    assert torch.equal(weights, adapter.model.last_layer.weight.detach())



def test_the_cache_is_kept_apart_for_each_distance_precision(tmp_path, monkeypatch):
    """float32's activations differ from float64's by ~1e-6, enough to break a near tie: a report of a
    float32 run does not take a float64 run's sources from the same directory."""
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=0)
    data = write_image_folder(tmp_path / "train", per_class=2)
    meta = {"checkpoint_sha256": "abc", "dataset": data}  # no distance: a run in float64
    run = Run(dir=tmp_path, model="tiny", meta=meta, summary={}, per_image=None)
    find_sources(run, adapter, [0], data, cache_dir=tmp_path)
    assert json.loads(cache_file(run, tmp_path).read_text())["key"]["distance"] == "float64"
    searched = []
    monkeypatch.setattr("protobench.report.sources.nearest_patches", lambda a, d, protos: searched.append(protos) or {})
    find_sources(run, adapter, [0], data, cache_dir=tmp_path)
    assert searched == []
    float32 = Run(dir=tmp_path, model="tiny", meta={**meta, "distance": "float32"}, summary={}, per_image=None)
    find_sources(float32, adapter, [0], data, cache_dir=tmp_path)
    assert searched == [[0]]
