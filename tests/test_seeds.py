"""--seeds: per-image means over the attack's seeds and the two-level bootstrap interval."""

import itertools

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from protobench.cli.app import app
from protobench.core.protocol import EvalProtocol
from protobench.errors import OptionError
from protobench.run import seeds


def test_one_image_two_seeds_enumerated():
    """One image, seeds giving 0 and 2: the seed resamples (0, 0), (0, 2), (2, 0), (2, 2) have means
    0, 1, 1, 2 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 2]."""
    low, high = seeds.two_level_ci(np.array([[0.0, 2.0]]), seed=0, n_boot=4000)
    assert (low, high) == (0.0, 2.0)
    rng = np.random.default_rng(1)
    draws = seeds.two_level_means(np.array([[0.0, 2.0]]), np.zeros((4000, 1), dtype=int),
                                  rng.integers(0, 2, (4000, 1, 2)))
    for mean, p in ((0.0, 0.25), (1.0, 0.5), (2.0, 0.25)):
        assert abs((draws == mean).mean() - p) < 0.03


def test_two_level_means_against_a_loop():
    values = np.array([[1.0, 2.0, 4.0], [np.nan, np.nan, np.nan], [0.5, -1.0, 3.0], [7.0, 7.0, np.nan]])
    rng = np.random.default_rng(3)
    images, picks = rng.integers(0, 4, (30, 4)), rng.integers(0, 3, (30, 4, 3))
    for got, rows, cols in zip(seeds.two_level_means(values, images, picks), images, picks):
        kept = [values[i, j] for i, js in zip(rows, cols) for j in js if not np.isnan(values[i, j])]
        assert (np.isnan(got) and not kept) or got == pytest.approx(np.mean(kept))


def test_the_interval_widens_with_the_seeds_spread():
    """The same per-image means; seeds that disagree give a wider interval than seeds that agree."""
    rng = np.random.default_rng(0)
    means = rng.normal(10, 1, 40)
    agree = np.stack([means, means, means], axis=1)
    spread = np.stack([means - 3, means, means + 3], axis=1)
    a, b = seeds.two_level_ci(agree, 0), seeds.two_level_ci(spread, 0)
    assert b[1] - b[0] > (a[1] - a[0]) * 1.2


def test_seeds_options():
    proto = EvalProtocol.make(seeds=(3, 1, 2))
    assert proto.seed == 3 and proto.resolved(32)["seeds"] == [3, 1, 2]
    for bad in ((1,), (1, 1)):
        with pytest.raises(OptionError, match="--seeds"):
            EvalProtocol.make(seeds=bad)


def test_a_three_seed_run(tmp_path, tiny_ckpt, image_folder):
    def run(out, *extra):  # every image, no --limit: a seed also picks --limit's subset
        args = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", out, "--steps", 2]
        result = CliRunner().invoke(app, [str(a) for a in [*args, *extra]])
        assert result.exit_code == 0, result.output
        return pd.read_csv(out / "per_image.csv"), pd.read_csv(out / "summary.csv").iloc[0]

    singles = [run(tmp_path / f"s{s}", "--seed", s)[0] for s in (0, 1)]
    both, summary = run(tmp_path / "both", "--seeds", "0,1")
    assert summary["seeds"] == 2 and both["index"].tolist() == singles[0]["index"].tolist()
    for name in ("PAC", "PLC", "PRC"):  # each image's mean over the two one-seed runs
        assert both[name].tolist() == pytest.approx(((singles[0][name] + singles[1][name]) / 2).tolist(), abs=1e-4)
    correct = [(t["pred_after"] == t["label"]).mean() for t in singles]
    assert summary["acc_after"] == pytest.approx(100 * np.mean(correct))
    assert summary["PAC_ci_low"] <= summary["PAC_mean"] <= summary["PAC_ci_high"]
    result = CliRunner().invoke(app, ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--seeds", "0,x"])
    assert result.exit_code == 2 and "--seeds" in result.stderr
