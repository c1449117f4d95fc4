"""torchrun with two CPU processes (gloo) writes the same tables as one process."""

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from protobench.cli.app import app


def test_two_ranks_equal_one_process(tiny_ckpt, image_folder, tmp_path):
    common = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--steps", "3", "--batch-size", "4",
              "--device", "cpu"]
    single = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "protobench", *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("per_image.csv", "summary.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["processes"] == 2 and meta["evaluated_images"] == 12
    assert not list((tmp_path / "two").glob("*.partial*"))  # merged and cleaned up
    assert run.stdout.count("results written to") == 1  # only rank 0 reports
