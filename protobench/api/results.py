"""`Results`: one evaluation's tables as pandas DataFrames, the files the CLI writes, and its report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from protobench.api.calls import public
from protobench.errors import ProtobenchError

if TYPE_CHECKING:
    import pandas as pd

FILES = ("per_image.csv", "per_prototype.csv", "summary.csv", "meta.json")  # meta.json last: it marks a run complete


class Results:
    """The results of one evaluation.

    Attributes:
        per_image: one row per image (per_image.csv's columns: docs/metrics.md, Output files).
        summary: one row: each metric's mean, std, n and 95% CI, the accuracies (summary.csv).
        per_prototype: one row per prototype (per_prototype.csv), or None without a part pass.
        meta: what was run, on what, how (meta.json).
        dir: the result directory, when the run was given `out` or the results were saved.
    """

    def __init__(self, directory: str | Path):
        """The results of the finished run in `directory` (the API's or the CLI's), read into memory."""
        from protobench.run.resume import _read_table, read_json_object, state

        where = Path(directory)
        if state(where) != "complete":
            raise ProtobenchError(f"{where} holds no finished run (no meta.json): give the --out of a finished "
                                  "protobench evaluate")
        self.files = {name: (where / name).read_bytes() for name in FILES if (where / name).is_file()}
        self.dir: Path | None = where
        self.source: Any = None  # (model, data) of the run, for report()
        self.meta = read_json_object(where / "meta.json")
        self.per_image = _read_table(where / "per_image.csv")
        self.summary = _read_table(where / "summary.csv")
        has = (where / "per_prototype.csv").is_file()
        self.per_prototype = _read_table(where / "per_prototype.csv") if has else None

    @classmethod
    @public
    def load(cls, directory: str | Path) -> Results:
        """The results of a finished run in `directory` (the API's or the CLI's)."""
        return cls(directory)

    @property
    def scores(self) -> dict[str, Any]:
        """The summary row as a dict (e.g. scores['PAC_mean'])."""
        return self.summary.iloc[0].to_dict()

    @public
    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the files the CLI writes (per_image.csv, summary.csv, meta.json and per_prototype.csv when
        there is one), byte for byte; `protobench compare` and `protobench report` read them."""
        from protobench.files import check_writable_dir
        from protobench.run.resume import check_out, clear

        directory = Path(directory)
        check_out(directory, overwrite, False)
        check_writable_dir(directory)
        clear(directory)
        self.write_files(directory)
        self.dir = directory
        return directory

    def write_files(self, directory: Path) -> None:
        from protobench.files import atomic_path, writing

        with writing(directory):
            directory.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if name in self.files:
                with atomic_path(directory / name) as tmp:
                    Path(tmp).write_bytes(self.files[name])

    @public
    def report(self, out: str | Path | None = None, *, worst: int = 3, best: int = 1) -> Path:
        """Write report.html and its PNGs into `out` (default: DIR/report when the results are saved),
        drawing the worst and best images by re-running them from the model and data in memory; the
        re-run must reproduce per_image.csv (it does unless the model changed since). Returns the page."""
        from protobench.api.drawing import draw_report

        if out is None and self.dir is None:
            raise ProtobenchError("Results.report: give the directory to write the report to")
        return draw_report(self, Path(out) if out is not None else self.dir / "report", worst, best)

    def __repr__(self) -> str:
        row = self.scores
        shown = ", ".join(f"{k}={row[k]:.4g}" for k in ("PLC_mean", "PAC_mean", "PRC_mean", "acc_before")
                          if isinstance(row.get(k), float))
        return f"Results({row.get('model')!r}, {row.get('images')} images{', ' + shown if shown else ''})"
