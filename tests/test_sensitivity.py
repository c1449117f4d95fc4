"""protobench sensitivity: the grid, Kendall's tau (hand-worked), and a run on two tiny models."""

import pandas as pd
import pytest

from protobench.core.protocol import EvalProtocol
from protobench.errors import OptionError
from protobench.run import sensitivity as S
from protobench.run.evaluate import EvaluateConfig, evaluate


@pytest.mark.parametrize("x, y, tau", [
    ((1, 2, 3, 4), (1, 3, 2, 4), 2 / 3),  # 5 concordant pairs, 1 discordant, of 6
    ((1, 2, 3), (3, 2, 1), -1.0),
    ((1, 2, 2, 3), (1, 2, 3, 3), 0.8),  # 4 concordant, 0 discordant; one tie in each: 4 / sqrt(5 * 5)
    ((1, 1, 1), (1, 2, 3), float("nan")),  # no order on one side
])
def test_kendall_tau_by_hand(x, y, tau):
    got = S.kendall_tau(x, y)
    assert got == pytest.approx(tau, nan_ok=True)


def test_the_grid_changes_one_setting_at_a_time():
    default = EvalProtocol.make()
    points = S.grid(list(S.AXES), default)
    assert len(points) == sum(len(settings) for _, settings in S.AXES.values())
    for point in points:
        field = S.AXES[point.axis][0]
        changed = {k for k, v in point.protocol.__dict__.items() if v != default.__dict__[k]}
        assert changed <= {field} and point.is_default == (not changed)
    defaults = {S.folder(p.protocol) for p in points if p.is_default}
    assert len(defaults) == 1 and sum(p.is_default for p in points) == len(S.AXES)  # one run serves every axis
    with pytest.raises(OptionError, match="--axes"):
        S.grid(["epsilon"], default)


def test_two_tiny_models_over_eps(tmp_path, image_folder):
    from protobench.models.lookup import get_adapter

    models = {}
    for seed in (0, 1):
        path = tmp_path / f"m{seed}.safetensors"
        get_adapter("protopnet").tiny(seed=seed).save(str(path))
        models[f"m{seed}"] = str(path)
    calls = []

    def run(ckpt, protocol, where):
        calls.append(where)
        evaluate(EvaluateConfig(ckpt=ckpt, data=image_folder, out=str(where), protocol=protocol, device="cpu",
                                limit=6))

    base = EvalProtocol.make(steps=2)
    from protobench.report.figures import sensitivity as draw

    result = S.sensitivity(models, ["eps"], tmp_path / "out", run, base=base, draw=draw)
    assert len(calls) == 2 * 4 and result["points"] == 4
    frame = pd.read_csv(tmp_path / "out" / "sensitivity.csv", dtype={"setting": str})
    assert set(frame["metric"]) == set(S.METRIC_NAMES) and len(frame) == 2 * 4 * len(S.METRIC_NAMES)
    assert frame.loc[frame["default"], "setting"].unique().tolist() == ["0.4"]
    tau = pd.read_csv(tmp_path / "out" / "tau.csv")
    assert len(tau) == 3 * len(S.METRIC_NAMES) and tau["tau"].abs().max() <= 1  # two models: tau is +-1 or NaN
    for metric in S.METRIC_NAMES:
        assert (tmp_path / "out" / f"sensitivity-{metric}.png").stat().st_size > 1000
    S.sensitivity(models, ["eps"], tmp_path / "out", run, base=base)
    assert len(calls) == 8  # every grid point reused


def test_a_point_is_reused_only_for_the_same_checkpoint_and_images(tmp_path):
    from protobench.models.lookup import get_adapter

    path = tmp_path / "m.safetensors"
    get_adapter("protopnet").tiny(seed=0).save(str(path))
    models = {"m": str(path)}
    points = S.grid(["eps"], EvalProtocol.make())[:1]
    calls = []

    def run(ckpt, protocol, where):
        calls.append(where)
        where.mkdir(parents=True)
        (where / "meta.json").write_text("{}")

    first = S.run_grid(models, points, tmp_path, run, images={"data": "d", "limit": 2})
    again = S.run_grid(models, points, tmp_path, run, images={"data": "d", "limit": 2})
    assert len(calls) == 1 and first == again  # the same images: reused
    more = S.run_grid(models, points, tmp_path, run, images={"data": "d", "limit": 40})
    assert len(calls) == 2 and more != first  # another --limit: other images, evaluated again
    get_adapter("protopnet").tiny(seed=1).save(str(path))  # the same file name, another model
    S.run_grid(models, points, tmp_path, run, images={"data": "d", "limit": 40})
    assert len(calls) == 3


def test_the_default_margin_is_named_and_placed_by_the_pixels_the_runs_used(tmp_path):
    import json

    point = next(p for p in S.grid(["margin"], EvalProtocol.make()) if p.setting is None)
    dirs = {}
    for model, used in (("a", 3), ("b", 3), ("c", 10)):
        where = tmp_path / model
        where.mkdir()
        (where / "meta.json").write_text(json.dumps({"protocol": {"margin": used}}))
        dirs[(model, S.folder(point.protocol))] = where
    assert S.label(point, ["a", "b"], dirs) == "3 (default)"
    assert S.label(point, ["a", "c"], dirs) == "default"  # models of other sizes used other margins
    points = S.grid(["margin"], EvalProtocol.make())
    assert [p.setting for p in points] == [0, 5, None, 20]
    for p in points:
        dirs.setdefault(("a", S.folder(p.protocol)), tmp_path / "a")
        dirs.setdefault(("c", S.folder(p.protocol)), tmp_path / "c")
    assert [S.label(p, ["a"], dirs) for p in S.ordered(points, ["a"], dirs)] == ["0", "3 (default)", "5", "20"]
    assert [S.label(p, ["a", "c"], dirs) for p in S.ordered(points, ["a", "c"], dirs)] == ["0", "5", "default",
                                                                                             "20"]
