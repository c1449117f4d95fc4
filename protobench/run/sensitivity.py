"""`protobench sensitivity`: how much the numbers, and the ranking of models, depend on the
benchmark's own choices (docs/metrics.md, Sensitivity).

Each model is evaluated at the default protocol and at each setting of a grid that changes one
choice at a time (AXES). Every grid point is an ordinary result directory, OUT/runs/<model>/<point>/,
named by its protocol, the checkpoint's hash and the images (the data and --limit): a point that is
the same protocol as another (each axis's default is the default protocol) is run once, and a rerun
reuses every finished point of the same model and images. The results are:
- sensitivity.csv: one row per model, grid point and metric (mean and 95% interval);
- sensitivity-<metric>.png: the metric against each setting, one line per model (drawn by
  protobench.report.figures.sensitivity);
- tau.csv: per grid point and metric, Kendall's tau between the models' ranking there and at the
  default, with a 95% bootstrap interval over the images (both rankings from the same resample).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from protobench.core.metrics import METRICS
from protobench.core.protocol import EvalProtocol
from protobench.errors import OptionError

# axis -> (protocol field, settings); the default protocol's own setting is among them (None: the margin
# the region gives by default, 10 px at 224 px)
AXES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "eps": ("eps", (0.1, 0.2, 0.4, 0.8)),
    "steps": ("steps", (10, 20, 40, 80)),
    "attack": ("attack", ("noise", "pgd", "apgd")),
    "region": ("region", ("box", "tokens")),
    "box_quantile": ("box_q", (0.9, 0.95, 0.99)),
    "margin": ("margin", (0, 5, None, 20)),
    "plc_quantile": ("plc_q", (0.8, 0.9, 0.95)),
}
METRIC_NAMES = ("PLC", "PAC", "PRC", "acc_after")
N_BOOT, SEED = 1000, 0


@dataclass(frozen=True)
class Point:
    axis: str
    setting: Any
    protocol: EvalProtocol

    @property
    def is_default(self) -> bool:
        return getattr(EvalProtocol.make(), AXES[self.axis][0]) == self.setting

    @property
    def label(self) -> str:
        return "default" if self.setting is None else str(self.setting)


def grid(axes: Sequence[str], base: EvalProtocol) -> list[Point]:
    """Every grid point of `axes` (OptionError for an unknown axis)."""
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise OptionError(f"--axes: unknown axis {unknown[0]!r}; use some of {', '.join(AXES)} (comma-separated)")
    points = [Point(axis, setting, replace(base, **{AXES[axis][0]: setting})) for axis in axes
              for setting in AXES[axis][1]]
    for point in points:
        point.protocol.check()
    return points


def folder(protocol: EvalProtocol, identity: dict[str, Any] | None = None) -> str:
    """A grid point's folder: the same protocol (and `identity`: the same model and images), the same folder."""
    fields = dict(protocol.__dict__, **({"identity": identity} if identity else {}))
    text = json.dumps(fields, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def identity(ckpt: str, images: dict[str, Any] | None) -> dict[str, Any]:
    """What besides the protocol decides a grid point's numbers: the checkpoint's content and the images."""
    from protobench.checkpoints.formats import sha256

    return {"checkpoint_sha256": sha256(ckpt) if Path(ckpt).is_file() else ckpt, **(images or {})}


Evaluate = Callable[[str, EvalProtocol, Path], None]  # (checkpoint, protocol, result directory)


def run_grid(models: dict[str, str], points: list[Point], out: Path, evaluate: Evaluate,
             log: Callable[[str], None] = lambda _: None,
             images: dict[str, Any] | None = None) -> dict[tuple[str, str], Path]:
    """Each model at each distinct protocol of `points`, skipping finished result directories of the same
    checkpoint and `images` (what selects the images: data, limit)."""
    dirs = {}
    for model, ckpt in models.items():
        same = identity(ckpt, images)
        for point in points:
            where = out / "runs" / model / folder(point.protocol, same)
            if not (where / "meta.json").is_file():
                log(f"{model}: {point.axis} = {point.label}")
                evaluate(ckpt, point.protocol, where)
            dirs[(model, folder(point.protocol))] = where
    return dirs


def used(point: Point, models: Sequence[str], dirs: dict) -> Any:
    """The setting the runs of `point` used: the region resolves None (the default margin) by the image size;
    None when the models used different values (other sizes)."""
    if point.setting is not None:
        return point.setting
    field = AXES[point.axis][0]
    values = {json.loads((dirs[(m, folder(point.protocol))] / "meta.json").read_text())["protocol"].get(field)
              for m in models}
    return values.pop() if len(values) == 1 else None


def label(point: Point, models: Sequence[str], dirs: dict) -> str:
    """A setting as sensitivity.csv names it: the default margin with the pixels used, '3 (default)' at 64 px."""
    value = used(point, models, dirs)
    return point.label if point.setting is not None or value is None else f"{value} (default)"


def ordered(points: list[Point], models: Sequence[str], dirs: dict) -> list[Point]:
    """Each axis's points by the values the runs used, when all are numbers (the default margin among the
    others: 0, 3, 5, 20 at 64 px)."""
    result = []
    for axis in dict.fromkeys(p.axis for p in points):
        part = [p for p in points if p.axis == axis]
        keys = [used(p, models, dirs) for p in part]
        if all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in keys):
            part = [p for _, p in sorted(zip(keys, part), key=lambda pair: pair[0])]
        result += part
    return result


def tidy(models: Sequence[str], points: list[Point], dirs: dict) -> pd.DataFrame:
    """sensitivity.csv: model, axis, setting, default, metric, mean, ci_low, ci_high, images, run."""
    rows = []
    points = ordered(points, models, dirs)
    names = [label(point, models, dirs) for point in points]
    for model in models:
        for point, setting in zip(points, names):
            where = dirs[(model, folder(point.protocol))]
            summary = pd.read_csv(where / "summary.csv").iloc[0]
            for name in METRIC_NAMES:
                spec = METRICS.get(name)
                rows.append({"model": model, "axis": point.axis, "setting": setting, "default": point.is_default,
                             "metric": name, "mean": float(summary[spec.column]),
                             "ci_low": float(summary.get(f"{name}_ci_low", math.nan)),
                             "ci_high": float(summary.get(f"{name}_ci_high", math.nan)),
                             "images": int(summary["images"]), "run": str(where)})
    return pd.DataFrame(rows)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two rankings: (concordant - discordant) / sqrt((n0 - ties x) (n0 - ties y))."""
    concordant = discordant = ties_x = ties_y = pairs = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            pairs += 1
            ties_x += dx == 0
            ties_y += dy == 0
            concordant += dx * dy > 0
            discordant += dx * dy < 0
    denominator = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    return (concordant - discordant) / denominator if denominator else math.nan


def taus(models: Sequence[str], points: list[Point], dirs: dict) -> pd.DataFrame:
    """tau.csv: per non-default grid point and metric, tau against the default with its interval."""
    from protobench.run.paired import draws, per_image_values, resampled_means

    default = next(p for p in points if p.is_default)
    tables = {key: pd.read_csv(where / "per_image.csv").set_index("index", drop=False) for key, where in dirs.items()}
    rows = []
    for point in (p for p in points if not p.is_default):
        pair = [[tables[(m, folder(p.protocol))] for m in models] for p in (default, point)]
        common = sorted(set.intersection(*(set(t.index) for side in pair for t in side)))
        idx = draws(len(common), N_BOOT, SEED)
        for name in METRIC_NAMES:
            spec = METRICS.get(name)
            values = [[per_image_values(spec, t.loc[common]) for t in side] for side in pair]
            point_tau = kendall_tau(*([float(np.nanmean(v)) for v in side] for side in values))
            boot = [[resampled_means(v, idx) for v in side] for side in values]  # per side, per model: (N_BOOT,)
            drawn = np.array([kendall_tau([b[k] for b in boot[0]], [b[k] for b in boot[1]]) for k in range(N_BOOT)])
            drawn = drawn[np.isfinite(drawn)]
            low, high = (np.quantile(drawn, [0.025, 0.975]) if len(drawn) else (math.nan, math.nan))
            rows.append({"axis": point.axis, "setting": point.label, "metric": name, "tau": point_tau,
                         "ci_low": float(low), "ci_high": float(high), "models": len(models), "images": len(common)})
    return pd.DataFrame(rows)


def sensitivity(models: dict[str, str], axes: Sequence[str], out: Path, evaluate: Evaluate,
                base: EvalProtocol | None = None, log: Callable[[str], None] = lambda _: None,
                draw: Callable[[pd.DataFrame, str], bytes] | None = None,
                images: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the grid and write sensitivity.csv, tau.csv and, with `draw` (protobench.report.figures.
    sensitivity), one PNG per metric into `out`. `images`: what selects the images `evaluate` runs on
    (e.g. data and limit); a finished point is reused only for the same checkpoint and `images`."""
    from protobench.run.results import write_csv

    if len(models) < 2:
        raise OptionError("sensitivity compares the ranking of models: give at least two --ckpt")
    points = grid(axes, base or EvalProtocol.make())
    if not any(p.is_default for p in points):
        points.insert(0, Point(axes[0], getattr(EvalProtocol.make(), AXES[axes[0]][0]), base or EvalProtocol.make()))
    out.mkdir(parents=True, exist_ok=True)
    dirs = run_grid(models, points, out, evaluate, log, images)
    frame, tau = tidy(list(models), points, dirs), taus(list(models), points, dirs)
    write_csv(out / "sensitivity.csv", frame)
    write_csv(out / "tau.csv", tau)
    for metric in METRIC_NAMES if draw is not None else ():
        (out / f"sensitivity-{metric}.png").write_bytes(draw(frame, metric))
    return {"out": str(out), "points": len({folder(p.protocol) for p in points}), "tau": tau}
