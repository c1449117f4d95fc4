"""An attack added from this test module alone, with no other change, runs through `evaluate --attack`."""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from protobench.cli.app import app
from protobench.core.attack import ATTACKS

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def evaluate(ckpt, data, out, *extra):
    result = invoke("evaluate", "--ckpt", ckpt, "--data", data, "--out", out, "--limit", 6, "--steps", 2, *extra)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def identity_attack():
    """An attack that changes nothing, and remembers how it was called."""
    calls = []

    def unchanged(objective, x, attackable, noise, *, eps, step, steps, bounds=None):
        calls.append({"shape": tuple(attackable.shape), "dtype": attackable.dtype, "eps": eps, "step": step,
                      "steps": steps, "clipped": bounds is not None, "noise": (float(noise.min()), float(noise.max())),
                      "objective": tuple(objective(x).shape)})
        return x.clone(), torch.zeros(len(x), dtype=torch.long)

    ATTACKS.add("unchanged", unchanged)
    yield calls
    ATTACKS.remove("unchanged")


def test_a_registered_attack_runs_through_evaluate(identity_attack, tiny_ckpt, image_folder, tmp_path):
    invoke_args = ("--attack", "unchanged", "--eps", 0.3, "--step", 0.02, "--batch-size", 4)
    evaluate(tiny_ckpt, image_folder, tmp_path / "out", *invoke_args)
    assert len(identity_attack) == 2  # 6 images in batches of 4
    first = identity_attack[0]
    assert first["shape"] == (4, 1, 32, 32) and first["dtype"] == torch.bool and first["objective"] == (4,)
    assert (first["eps"], first["step"], first["steps"], first["clipped"]) == (0.3, 0.02, 2, True)
    assert -1 <= first["noise"][0] and first["noise"][1] < 1
    per_image = pd.read_csv(tmp_path / "out" / "per_image.csv")
    # nothing changed: the model sees the same images, so every metric is exactly 0
    assert (per_image.act_after == per_image.act_before).all() and (per_image.pred_after == per_image.pred_before).all()
    assert (per_image[["PAC", "PRC", "PLC", "zero_grad_steps"]] == 0).all().all()
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["protocol"]["attack"] == "unchanged"


def test_an_unknown_attack_is_one_line_with_a_suggestion(tiny_ckpt, image_folder, tmp_path):
    result = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--attack", "pgdd")
    assert result.exit_code == 2 and not (tmp_path / "o").exists()
    assert "unknown attack 'pgdd'. Did you mean 'pgd'?" in result.stderr and "Traceback" not in result.output
