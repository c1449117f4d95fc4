"""What a long run tells whoever watches it: one protocol for `protobench evaluate` (images done, running
mean PAC) and the training loop (batches done, running mean of each loss term). The CLI draws it as
progress bars; the library calls it and never prints."""

from __future__ import annotations

import math
from typing import Iterable, Protocol


class Progress(Protocol):
    def start(self, total: int, description: str) -> None:
        """A part of `total` items begins (an evaluation's images, an epoch's batches)."""

    def update(self, done: int, values: dict[str, float]) -> None:
        """`done` items of the part are finished; `values`: running means so far (PAC, loss terms)."""

    def end(self, row: dict) -> None:
        """The part finished, with its figures (a training epoch's log row)."""

    # optional: rows(rows, skipped), an evaluation batch's per-image rows, for a display that keeps some

    def stop(self) -> None:
        """Nothing more comes (also after an error)."""


class NoProgress:
    def start(self, total: int, description: str) -> None: ...
    def update(self, done: int, values: dict[str, float]) -> None: ...
    def end(self, row: dict) -> None: ...
    def stop(self) -> None: ...


class RunningMean:
    """The mean of the finite values seen so far (NaN before the first)."""

    def __init__(self) -> None:
        self.total, self.n = 0.0, 0

    def add(self, values: Iterable[float | None]) -> None:
        for v in values:
            if v is not None and math.isfinite(v):
                self.total += v
                self.n += 1

    @property
    def value(self) -> float:
        return self.total / self.n if self.n else float("nan")
