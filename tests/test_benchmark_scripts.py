"""The CPU-runnable parts of benchmarks/: the JPEG mode's CUB-layout generator and decoders,
and gpu_suite.sh's syntax and dry run (the GPU parts run on a GPU machine)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import cub_jpeg  # noqa: E402


def test_generated_jpegs_are_a_cub_archive_protobench_reads(tmp_path):
    root = cub_jpeg.make_cub(tmp_path / "CUB_200_2011", n=5, processes=1)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt"):
        assert (root / name).is_file(), name
    assert len((root / "classes.txt").read_text().splitlines()) == 200
    first = (root / "images.txt").read_text().splitlines()[0].split()
    assert first[0] == "1" and first[1].startswith("001.") and first[1].endswith(".jpg")
    with Image.open(root / "images" / first[1]) as img:
        assert img.format == "JPEG" and max(img.size) == 500 and 280 <= min(img.size) <= 500

    info = type("Info", (), {"input_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)})()
    data = cub_jpeg.open_test_split(root, info)  # protobench's own CUB reader
    assert len(data) == 5 and data.labels == [0, 1, 2, 3, 4]
    x, label, index = data[4]
    assert x.shape == (3, 32, 32) and label == 4 and index == 4

    decoded = cub_jpeg.time_workers(data, batch_size=2, workers=0, device=torch.device("cpu"))
    assert decoded["images"] == 5 and decoded["images_per_s"] > 0
    assert cub_jpeg.make_cub(root, n=5) == root  # kept, not written again
    if not torch.cuda.is_available():
        assert cub_jpeg.time_cuda_decode(data, 2, 0, torch.device("cpu"))["available"] is False


def test_gpu_suite_parses_and_dry_runs(tmp_path):
    script = BENCHMARKS / "gpu_suite.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = subprocess.run(["bash", str(script), "--dry-run", str(tmp_path / "results")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    plan = out.stdout
    for part in ("pytest", "-m gpu", "--jpeg", "--precision bf16", "--precision fp32", "--compile-mode max-autotune",
                 "--compile-mode reduce-overhead", "--distance float32", "precision_diff.py --device cuda"):
        assert part in plan, part
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_gpu_suite_needs_a_results_directory():
    out = subprocess.run(["bash", str(BENCHMARKS / "gpu_suite.sh")], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "RESULTS_DIR" in out.stderr
