"""The rules that decide whether a metric regressed (docs/ci.md, What "regressed" means): the
tolerances, today's `tolerance` gate and the `significant` gate on a paired interval."""

from __future__ import annotations

import math
from typing import Any, Sequence

from protobench.core.metrics import MetricSpec, specs
from protobench.errors import OptionError

GATES = ("tolerance", "significant")


def tolerance_names() -> dict[str, list[str]]:
    """--tol name -> the metrics it sets: each metric's own name, and its groups ('acc')."""
    names: dict[str, list[str]] = {}
    for spec in specs():
        for name in (spec.name, *spec.tol_groups):
            names.setdefault(name, []).append(spec.name)
    return names


def parse_tolerances(pairs: Sequence[str]) -> dict[str, float]:
    """Defaults overridden by METRIC=VALUE pairs ('acc' sets acc_before and acc_after)."""
    tol = {spec.name: spec.tolerance for spec in specs()}
    known = tolerance_names()
    for pair in pairs:
        name, sep, value = pair.partition("=")
        names = known.get(name)
        if not sep or not names:
            raise OptionError(f"--tol wants METRIC=VALUE with METRIC one of {', '.join(known)}; got {pair!r}")
        try:
            number = float(value)
        except ValueError:
            raise OptionError(f"--tol {pair!r}: {value!r} is not a number") from None
        if not (math.isfinite(number) and number >= 0):
            raise OptionError(f"--tol {pair!r}: a tolerance must be a finite number, zero or positive")
        tol.update({n: number for n in names})
    return tol


def judge(base: float, new: float, tolerance: float, higher_is_worse: bool) -> str:
    """'pass', 'FAIL' (worse by more than the tolerance, or undefined now but not before) or 'n/a'."""
    if math.isnan(new):
        return "n/a" if math.isnan(base) else "FAIL"
    if math.isnan(base):
        return "n/a"
    worse_by = (new - base) if higher_is_worse else (base - new)
    return "FAIL" if worse_by > tolerance + 1e-9 else "pass"  # 1e-9: CSV rounding of equal values


def verdict(spec: MetricSpec, values: dict[str, Any], tolerance: float, gate: str) -> str:
    """A metric's status under `gate`: 'pass', 'FAIL', 'n/a', or 'derived' for a metric computed from
    others (AC from the two accuracies), which is reported but never gated, so that one accuracy
    drop is one failure. `values`: base, new and the delta's ci_low / ci_high (NaN when unpaired)."""
    if spec.derived_from:
        return "derived"
    status = judge(values["base"], values["new"], tolerance, spec.higher_is_worse)
    if gate != "significant" or status != "FAIL" or math.isnan(values["new"]) or math.isnan(values["ci_low"]):
        return status  # no interval (not paired), or undefined now: the tolerance decides
    least_worse = values["ci_low"] if spec.higher_is_worse else -values["ci_high"]
    return "FAIL" if least_worse > tolerance + 1e-9 else "pass"
