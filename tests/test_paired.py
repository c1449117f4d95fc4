"""Paired deltas and the significant gate of protobench compare, on hand-worked numbers."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from protobench.cli.app import app
from protobench.core.metrics import METRICS
from protobench.run import paired

runner = CliRunner()
META = {"protocol": {"name": "default", "attack": "pgd", "steps": 40, "seed": 0}, "dataset_kind": "imagefolder",
        "split": None, "limit": None, "dataset_fingerprint": {"sha256": "ab" * 32, "files": 6}}


def table(pac, plc=None, correct=None, index=None):
    """A per-image table: PAC and PLC per image, and whether the attacked prediction is right."""
    n = len(pac)
    correct = [True] * n if correct is None else correct
    return pd.DataFrame({"index": index or list(range(n)), "path": [f"img{i}.png" for i in range(n)],
                         "label": [1] * n, "pred_before": [1] * n, "pred_after": [1 if c else 0 for c in correct],
                         "PAC": pac, "PLC": plc or [20.0] * n, "PRC": [0] * n})


def test_three_images_bootstrap_matches_its_enumeration():
    """Deltas 0, 1, 5: the 27 equally likely resamples give means 0 (1/27) ... 5 (1/27); the 95%
    interval runs from 0 to 5, and 20000 draws reproduce each mean's probability."""
    base, new = table([10.0, 10.0, 10.0]), table([10.0, 11.0, 15.0])
    idx = paired.draws(3, 20000)
    result = paired.paired(METRICS.get("PAC"), base, new, idx)
    assert (result.base, result.new, result.delta) == (10.0, 12.0, 2.0)
    assert (result.ci_low, result.ci_high) == (0.0, 5.0)
    exact: dict[float, float] = {}
    for pick in itertools.product([0.0, 1.0, 5.0], repeat=3):
        exact[round(sum(pick) / 3, 6)] = exact.get(round(sum(pick) / 3, 6), 0) + 1 / 27
    drawn = np.round(paired.resampled_means(np.array([0.0, 1.0, 5.0]), idx), 6)
    for mean, p in exact.items():
        assert abs((drawn == mean).mean() - p) < 0.01, mean


def test_resampled_means_against_a_loop():
    """The vectorized resampled means equal the obvious loop (NaN values left out; a draw of NaNs only is NaN)."""
    values = np.array([3.0, math.nan, -1.5, 8.0, math.nan, 0.25, 2.0])
    idx = np.vstack([paired.draws(7, 40, seed=3), [[1, 4, 4, 1, 1, 4, 4]]])
    for row, got in zip(idx, paired.resampled_means(values, idx)):
        kept = [values[i] for i in row if not math.isnan(values[i])]
        assert (math.isnan(got) and not kept) or got == pytest.approx(sum(kept) / len(kept), abs=1e-12)


def test_a_run_level_metric_is_recomputed_on_each_resample():
    """Accuracy after the attack: 100% -> 50% on images 0-3; a draw of image 1 alone moves it 0 -> -100."""
    base, new = table([1.0] * 4), table([1.0] * 4, correct=[True, False, True, False])
    result = paired.paired(METRICS.get("acc_after"), base, new, np.array([[1, 1, 1, 1]] * 5))
    assert (result.base, result.new, result.delta, result.ci_low, result.ci_high) == (100, 50, -50, -100, -100)
    result = paired.paired(METRICS.get("acc_after"), base, new, np.array([[0, 2, 0, 2], [1, 3, 1, 3]] * 10))
    assert (result.ci_low, result.ci_high) == (-100, 0)


def test_per_row_values_agree_with_resummarising_each_resample():
    """Every metric with summary_rows: the fast path (means of per-row values) gives what summarising
    each resampled table gives, draw for draw."""
    from dataclasses import astuple, replace

    base = table([1.0] * 6, correct=[True, True, False, True, False, True])
    new = table([1.0] * 6, correct=[True, False, False, True, True, False])
    new.loc[2, "pred_before"] = 0
    idx = paired.draws(6, 300, seed=5)
    for _, spec in METRICS.items():
        if spec.summary_rows is None:
            continue
        fast = paired.paired(spec, base, new, idx)
        slow = paired.paired(replace(spec, summary_rows=None), base, new, idx)
        assert astuple(fast) == pytest.approx(astuple(slow), abs=1e-9), spec.name
        assert np.mean(spec.summary_rows(new)) == pytest.approx(spec.summary(new)), spec.name


def write(directory, frame, meta=META):
    directory.mkdir(parents=True)
    row = {"model": "m", "images": len(frame), "PAC_mean": frame["PAC"].mean(), "PLC_mean": frame["PLC"].mean(),
           "PRC_mean": 0.0, "acc_before": 100.0, "acc_after": 100.0, "AC": 0.0}
    pd.DataFrame([row]).to_csv(directory / "summary.csv", index=False)
    frame.to_csv(directory / "per_image.csv", index=False)
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def compare(*args):
    return runner.invoke(app, ["compare", *[str(a) for a in args], "--format", "markdown"])


def test_significant_gate_fails_a_sure_regression_and_passes_noise(tmp_path):
    base = write(tmp_path / "base", table([10.0, 10.0, 10.0]))
    sure = write(tmp_path / "sure", table([13.0, 13.0, 13.0]))  # every image 3 worse: interval [3, 3]
    noisy = write(tmp_path / "noisy", table([10.0, 11.0, 15.0]))  # mean 2 worse, interval [0, 5]
    for gate, new, code in (("tolerance", sure, 1), ("significant", sure, 1), ("tolerance", noisy, 1),
                            ("significant", noisy, 0)):
        result = compare(base, new, "--gate", gate)
        assert result.exit_code == code, (gate, new, result.output)
    result = compare(base, noisy, "--gate", "significant")
    assert "| m | PAC | 10.00 | 12.00 | +2.00 [+0.00, +5.00] | 1.00 | pass |" in result.stdout
    assert "paired on the same 3 images" in result.stdout
    assert "| m | PAC | 10.00 | 13.00 | +3.00 [+3.00, +3.00] | 1.00 | **FAIL** |" in compare(base, sure).stdout
    assert compare(base, noisy, "--gate", "sometimes").exit_code == 2


def test_runs_differing_in_limit_or_seed_compare_on_their_shared_images(tmp_path):
    base = write(tmp_path / "base", table([10.0] * 6, index=[0, 1, 2, 3, 4, 5]))
    part = write(tmp_path / "part", table([10.0, 10.0, 30.0], index=[4, 5, 9]), meta={**META, "limit": 3})
    result = compare(base, part)
    assert result.exit_code == 0, result.output  # image 9, the worse one, is not in the baseline
    assert "compared on the 2 images both runs evaluated (base 6, new 3)" in result.stdout
    other = write(tmp_path / "other", table([10.0] * 2, index=[7, 8]), meta={**META, "limit": 2})
    result = runner.invoke(app, ["compare", str(base), str(other)])
    assert result.exit_code == 2 and "no image in common" in result.stderr
    seeded = write(tmp_path / "seeded", table([10.0] * 6), meta={**META, "protocol": {**META["protocol"], "seed": 1}})
    result = compare(base, seeded)
    assert result.exit_code == 0 and "different seeds (base 0, new 1)" in result.stdout


def test_significant_without_per_image_results_falls_back_to_the_tolerance(tmp_path):
    base = write(tmp_path / "base", table([10.0, 10.0, 10.0]))
    noisy = write(tmp_path / "noisy", table([10.0, 11.0, 15.0]))
    (noisy / "per_image.csv").unlink()
    result = compare(base, noisy, "--gate", "significant")
    assert result.exit_code == 1 and "gated by the tolerance alone" in result.stdout
