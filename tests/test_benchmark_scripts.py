"""The scripts in benchmarks/: each runs end to end at its smallest sizes (`--smoke`) on the CPU, the
attack benchmark's bare loop takes the attack's own passes, and gpu_suite.sh's steps all start
(`--dry-run`: every step on the CPU at the smallest sizes). The scripts are found by listing the
folder, so a new script without a smoke mode fails here. The heavier runs (several processes
each) are marked `benchmarks`: `pytest -m benchmarks` runs them, and so does .ci/run."""

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import attack_throughput  # noqa: E402
import cub_jpeg  # noqa: E402

SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
# Several processes or a whole demo evaluation each, even at the smallest sizes: run with -m benchmarks.
HEAVY = {"cpu_agreement.py", "demo_cpu.py", "finetune_overhead.py", "precision_diff.py"}
SMOKE_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _smoke_params():
    for script in SCRIPTS:
        marks = [pytest.mark.benchmarks] if script.name in HEAVY else []
        yield pytest.param(script, id=script.stem, marks=marks)


@pytest.mark.parametrize("script", [pytest.param(s, id=s.stem) for s in SCRIPTS])
def test_every_script_documents_a_smoke_mode(script):
    tree = ast.parse(script.read_text())
    assert "--smoke" in (ast.get_docstring(tree) or ""), f"{script.name}: its docstring must show --smoke"
    flags = [node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "attr", "") == "add_argument" and node.args
             and isinstance(node.args[0], ast.Constant)]
    assert "--smoke" in flags, f"{script.name}: no --smoke option"


@pytest.mark.parametrize("script", _smoke_params())
def test_every_script_runs_its_smoke_mode_on_the_cpu(script, tmp_path):
    out = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=SMOKE_ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)  # every script prints one JSON object
    assert isinstance(report, dict) and report
    check = CHECKS.get(script.stem)
    if check is not None:
        check(report)


def _attack_throughput(report):
    assert report["model"] == "smoke" and report["device"] == "cpu" and report["images"] == 4
    for key in ("protobench_img_steps_per_s", "ideal_img_steps_per_s", "reference_img_steps_per_s"):
        assert report[key] > 0 and math.isfinite(report[key]), key
    a, b, c = (report[f"{k}_img_steps_per_s"] for k in ("protobench", "ideal", "reference"))
    assert report["efficiency"] == pytest.approx(a / b) and report["speedup"] == pytest.approx(a / c)


def _cub_jpeg(report):
    assert report["images"] == 4
    workers, cuda = report["decode"]
    assert workers["images"] == 4 and cuda["available"] is False


def _scorecard_cost(report):
    assert report["images"] == 4 and set(report["seconds"]) == {"misalignment", "parts", "all"}


def _flush_denormal(report):
    assert report["same_numbers"] is True and report["subnormal_count"]["float_outputs"] > 0


def _report_scale(report):
    assert report["models"] == 2 and report["files"] > 0 and report["report_html_mb"] > 0


def _distance_cost(report):
    assert set(report["layer_demo_s"]) == {"float32", "float64"} and report["evaluate_images"] == 2


CHECKS = {"attack_throughput": _attack_throughput, "cub_jpeg": _cub_jpeg, "scorecard_cost": _scorecard_cost,
          "flush_denormal": _flush_denormal, "report_scale": _report_scale, "distance_cost": _distance_cost}


def test_the_bare_loop_takes_the_gradient_the_attack_takes(tiny_adapter):
    """One step of the bare loop is the input gradient of each image's chosen prototype's activation,
    the maximum of its map, computed here straight from the model."""
    from protobench.run.benchmark import attack_objective
    from protobench.run.forward import Runtime, frozen_eval, model_forward

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 4 - 2
    chosen = torch.tensor([0, 4, 5])
    weights = torch.nn.functional.one_hot(chosen, tiny_adapter.info.num_prototypes).float()
    with frozen_eval(tiny_adapter.model):
        grad = attack_throughput.ideal_step(attack_objective(model_forward(tiny_adapter, Runtime(chunk=2)), weights), x)
        leaf = x.clone().requires_grad_(True)
        maps, _ = tiny_adapter.forward(leaf)
        (expected,) = torch.autograd.grad(maps[torch.arange(3), chosen].amax(dim=(1, 2)).sum(), leaf)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


def test_the_bare_loop_makes_the_attack_s_model_calls_less_the_clean_and_attacked_passes(tiny_adapter, monkeypatch):
    """Same batches, same chunks: per batch the benchmark makes steps + 2 model calls (the clean
    pass, the steps, the pass on the attacked images), the bare loop the steps alone; the
    reference structure makes as many, one image each."""
    from protobench.core.protocol import EvalProtocol
    from protobench.run.forward import Runtime

    calls = []
    evidence = tiny_adapter.evidence
    monkeypatch.setattr(tiny_adapter, "evidence", lambda x: calls.append(tuple(x.shape)) or evidence(x))
    data = attack_throughput.SyntheticImages(5, 32, 3)
    runtime = Runtime(chunk=2)
    attack_throughput.time_protobench(tiny_adapter, data, EvalProtocol.make(steps=3), 4, runtime, 0)
    benchmark_calls, calls[:] = list(calls), []
    attack_throughput.time_ideal(tiny_adapter, data, 3, 4, runtime)
    # batches of 4 and 1 images in chunks of 2 rows (the last zero-padded): 2 calls, then 1, per pass
    assert calls == [(2, 3, 32, 32)] * (3 * 2 + 3 * 1)
    assert benchmark_calls == [(2, 3, 32, 32)] * (5 * 2 + 5 * 1)
    calls[:] = []
    attack_throughput.time_reference(tiny_adapter, data, EvalProtocol.make(steps=3), 2, runtime)
    assert calls == [(1, 3, 32, 32)] * (2 * 5)  # the reference's structure: one image per call, never padded


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


def _suite_steps() -> tuple[dict[str, str], str]:
    """gpu_suite.sh --print: step name -> its command, and the whole plan."""
    out = subprocess.run(["bash", str(BENCHMARKS / "gpu_suite.sh"), "--print"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    steps = [line.split(" ", 1) for line in out.stdout.splitlines()]
    assert len({name for name, _ in steps}) == len(steps), "step names must be unique"
    return dict(steps), out.stdout


def test_gpu_suite_parses_and_prints_its_plan(tmp_path):
    script = BENCHMARKS / "gpu_suite.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    steps, plan = _suite_steps()
    assert "gpu_tests" in steps
    for part in ("pytest", "-m gpu", "--jpeg", "--precision bf16", "--precision fp32", "--compile-mode max-autotune",
                 "--compile-mode reduce-overhead", "--distance float32", "precision_diff.py --device cuda"):
        assert part in plan, part
    assert "--smoke" not in plan and "--device cpu" not in plan  # the real run: full sizes, on the GPU


def test_gpu_suite_needs_a_results_directory():
    out = subprocess.run(["bash", str(BENCHMARKS / "gpu_suite.sh")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "RESULTS_DIR" in out.stderr


@pytest.mark.benchmarks
def test_gpu_suite_dry_run_starts_every_step_on_the_cpu_and_fills_its_results_directory(tmp_path):
    steps, _ = _suite_steps()
    results = tmp_path / "results"
    env = {**SMOKE_ENV, "PYTHON": sys.executable, "CUB_DIR": str(tmp_path / "cub"), "SUITE_SECONDS": "1500"}
    out = subprocess.run(["bash", str(BENCHMARKS / "gpu_suite.sh"), "--dry-run", str(results)], capture_output=True,
                         text=True, timeout=1600, env=env)
    assert out.returncode == 0, out.stderr
    ran = [line.split("\t") for line in (results / "steps.tsv").read_text().splitlines()]
    assert [name for name, _, _ in ran] == list(steps)
    failed = {name: (results / f"{name}.txt").read_text()[-2000:] for name, rc, _ in ran if rc != "0"}
    assert not failed, failed
    rows = [json.loads(line) for line in (results / "bench.jsonl").read_text().splitlines()]
    bench = [name for name, command in steps.items() if "attack_throughput.py" in command]
    assert [row["label"] for row in rows] == bench
    assert all("error" not in row and row["device"] == "cpu" and row["steps"] == 2 for row in rows)
    (step,) = [name for name, command in steps.items() if "precision_diff.py" in command]
    precision = (results / f"{step}.txt").read_text()  # the step's output and its warnings
    assert json.loads(precision[precision.index("{\n"):])["device"] == "cpu"
    assert "torch" in (results / "env.txt").read_text()
