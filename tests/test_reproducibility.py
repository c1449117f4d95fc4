"""The same numbers on any CPU, thread count, process layout and compilation, as far as float
arithmetic allows (docs/metrics.md, Reproducibility).

Each configuration runs `protobench evaluate` on the built-in demo in its own process (thread
count and CPU kernels are fixed per process) and the per-image tables are compared:
- the clean side (activation of p*, p*, predictions, the protected region) within CLEAN_TOL,
  relative to the value (absolute below 1);
- the attacked side: the PAC, PLC and PRC means within MEAN_TOL.
The default suite checks 1 vs 2 threads and AVX2 vs the machine's best kernels on 24 images with
a 10-step attack; `pytest -m slow` checks every configuration (1 thread, AVX2, both, torchrun with
2 ranks, --compile) on all 150 demo images with the default protocol (the acceptance figures in
docs/metrics.md, Reproducibility). On a CPU without AVX-512 the AVX2 cases compare AVX2 with
itself and still pass: they can only find a difference where the machine has a second kernel set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

CLEAN_TOL = 1e-5  # relative to the value (absolute below 1): float32 output of the float64 distance
MEAN_TOL = 0.1  # PAC / PLC points, PRC prototypes: float32 noise in the backbone flips a few sign steps
CLEAN = ("act_before", "proto", "proto_class", "pred_before", "protected_frac")
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # what an AVX2-only CPU runs


def evaluate(out: Path, args: list[str], env: dict[str, str] | None = None, torchrun: bool = False) -> pd.DataFrame:
    command = [sys.executable, "-m", "protobench", "evaluate", "--out", str(out), *args]
    if torchrun:
        command[1:3] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "protobench"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})})
    assert run.returncode == 0, run.stderr[-3000:]
    return pd.read_csv(out / "per_image.csv")


def assert_agree(base: pd.DataFrame, other: pd.DataFrame) -> None:
    assert list(base["index"]) == list(other["index"])
    for column in CLEAN:
        a, b = base[column].to_numpy(float), other[column].to_numpy(float)
        worst = (abs(a - b) / abs(a).clip(min=1)).max()
        assert worst <= CLEAN_TOL, f"{column}: differs by {worst:.3g} (relative)"
    for column in ("PAC", "PLC", "PRC"):
        gap = abs(base[column].mean() - other[column].mean())
        assert gap <= MEAN_TOL, f"mean {column} differs by {gap:.3g}"


QUICK = ["--limit", "24", "--steps", "10"]


@pytest.fixture(scope="module")
def quick_base(tmp_path_factory) -> pd.DataFrame:
    return evaluate(tmp_path_factory.mktemp("base") / "o", QUICK)


@pytest.mark.parametrize("env", [{"OMP_NUM_THREADS": "1"}, AVX2], ids=["one-thread", "avx2"])
def test_quick_agreement(quick_base, tmp_path, env):
    assert_agree(quick_base, evaluate(tmp_path / "o", QUICK, env))


@pytest.fixture(scope="module")
def full_base(tmp_path_factory) -> pd.DataFrame:
    return evaluate(tmp_path_factory.mktemp("full") / "o", [])


@pytest.mark.slow
@pytest.mark.parametrize("config", ["one-thread", "avx2", "avx2-one-thread", "torchrun", "compile"])
def test_demo_agrees_across_layouts(full_base, tmp_path, config):
    env = {"one-thread": {"OMP_NUM_THREADS": "1"}, "avx2": AVX2,
           "avx2-one-thread": {**AVX2, "OMP_NUM_THREADS": "1"}}.get(config)
    args = ["--compile"] if config == "compile" else []
    assert_agree(full_base, evaluate(tmp_path / "o", args, env, torchrun=config == "torchrun"))
