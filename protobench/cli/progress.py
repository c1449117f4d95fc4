"""Progress for long runs: a Rich bar on a terminal, plain lines elsewhere (CI logs, pipes).

Descriptions (model names) and loss-term names are printed literally, never as rich markup.
"""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class RunningMean:
    def __init__(self) -> None:
        self.total, self.n = 0.0, 0

    def add(self, values) -> None:
        for v in values:
            if v is not None and math.isfinite(v):
                self.total += v
                self.n += 1

    @property
    def value(self) -> float:
        return self.total / self.n if self.n else float("nan")


class RichProgress:
    """Images/s, running mean PAC and ETA; `every` seconds between plain lines off a terminal."""

    def __init__(self, console: Console | None = None, every: float = 10.0):
        self.console = console or Console(stderr=True)
        self.every = every
        self.bar: Progress | None = None

    def start(self, total: int, description: str) -> None:
        self.total, self.done, self.description = total, 0, description
        self.pac = RunningMean()
        self.t0 = self.last = time.perf_counter()
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} img/s  mean PAC {task.fields[pac]}"),
                                TimeRemainingColumn(), console=self.console, transient=False)
            self.task = self.bar.add_task(description, total=total, rate="-", pac="-")
            self.bar.start()
        else:
            self.console.print(f"{description}: {total} images", markup=False, highlight=False)

    def update(self, rows: list[dict], skipped: list[int]) -> None:
        self.done += len(rows) + len(skipped)
        self.pac.add(r.get("PAC") for r in rows)  # none without the attack (--metrics consistency)
        now = time.perf_counter()
        rate = self.done / max(now - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=f"{rate:.1f}", pac=f"{self.pac.value:.2f}")
        elif now - self.last >= self.every or self.done >= self.total:
            self.last = now
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            self.console.print(f"{self.description}: {self.done}/{self.total} images, {rate:.1f} img/s, "
                               f"mean PAC {self.pac.value:.2f}, ETA {eta:.0f} s", markup=False, highlight=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class TrainProgress:
    """Fine-tuning progress: one bar per epoch with the running mean of each loss term; off a
    terminal, one plain line per finished epoch."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bar: Progress | None = None

    def start(self, total: int, description: str) -> None:
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[terms]}", markup=False), TimeRemainingColumn(),
                                console=self.console)
            self.task = self.bar.add_task(description, total=total, terms="")
            self.bar.start()

    def update(self, done: int, terms: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, terms=format_terms(terms))

    def end(self, row: dict) -> None:
        self.stop()
        label = f"{row['phase']} epoch {row['epoch'] + 1}" if row["phase"] != "push" else "push"
        values = {k: v for k, v in row.items() if k not in ("phase", "epoch") and isinstance(v, (int, float))}
        self.console.print(f"{label}: {format_terms(values)}", markup=False, highlight=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def format_terms(terms: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.4g}" for name, value in terms.items() if math.isfinite(value))
