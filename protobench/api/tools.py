"""`protobench.compare`: the CLI's command of that name, returning an object."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from protobench.api.calls import public
from protobench.errors import OptionError

if TYPE_CHECKING:
    import pandas as pd

    from protobench.api.results import Results


@dataclass
class Comparison:
    """`protobench compare`'s answer: one row per model and metric, notes, and the verdict."""

    table: pd.DataFrame  # model, metric, base, new, delta, tolerance, status ('pass', 'FAIL', 'n/a')
    notes: list[str]

    @property
    def regressions(self) -> int:
        """How many metrics got worse by more than their tolerance."""
        return int((self.table["status"] == "FAIL").sum())

    @property
    def verdict(self) -> str:
        """'ok' or 'regressed' (the CLI's exit code 0 or 1)."""
        return "regressed" if self.regressions else "ok"

    def markdown(self) -> str:
        from protobench.run.compare import to_markdown

        return to_markdown(self.table, self.notes)


def _tolerances(tol: Mapping[str, float] | Sequence[str] | None) -> dict[str, float]:
    from protobench.run.compare import parse_tolerances

    if tol is None:
        return parse_tolerances([])
    if isinstance(tol, str):
        raise OptionError("compare's tol is a dict such as {'PAC': 0.5} (or a list of 'PAC=0.5')")
    pairs = [f"{k}={v}" for k, v in tol.items()] if isinstance(tol, Mapping) else list(tol)
    return parse_tolerances(pairs)


@public
def compare(base: Any, new: Any, tol: Mapping[str, float] | Sequence[str] | None = None,
            force: bool = False, gate: str = "tolerance") -> Comparison:
    """Is any metric of `new` worse than `base` by more than its tolerance?

    Args:
        base, new: Results, or result directories (or their summary.csv).
        tol: absolute tolerances by metric name or group, e.g. {'PAC': 0.5, 'acc': 0.01}; the rest keep their
            defaults (docs/ci.md).
        force: compare runs of different protocols or datasets anyway.
        gate: 'tolerance' (worse by more than the tolerance) or 'significant' (only when the paired 95%
            interval lies wholly beyond it; docs/ci.md).
    """
    from protobench.run.compare import compare as run_compare

    tolerances = _tolerances(tol)
    with ExitStack() as stack:
        paths = [_on_disk(item, stack) for item in (base, new)]
        table, notes = run_compare(paths[0], paths[1], tolerances, force, gate)
    return Comparison(table, notes)


def _on_disk(item: Any, stack: ExitStack) -> str:
    from protobench.api.results import Results

    if not isinstance(item, Results):
        return str(item)
    if item.dir is not None:
        return str(item.dir)
    where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="protobench-compare-"))) / "run"
    item.write_files(where)
    return str(where)
