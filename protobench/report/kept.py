"""The drawn images' tensors kept while `evaluate` runs, so that its own report need not re-run them.

`Keeper` is evaluate's progress display (it passes start, update and stop on) and watches the benchmark
loop (on_outcome, then update); under torchrun only rank 0 has a display, so only it keeps. It keeps
every image's tensors while they fit in `budget` bytes; past that it keeps only the images that can still be drawn as the K worst
or best by PAC or PLC: an image that is not among them now never will be, as more images only push it
further down. A median image dropped that way, or any image of a resumed or multi-process run that
this process did not evaluate, is re-run by the report from the verified checkpoint as before.
"""

from __future__ import annotations

from typing import Any

BUDGET = 256 * 2**20  # bytes of kept tensors before the keeper starts dropping images


class Keeper:
    """evaluate's progress (start / update / stop, passed on to `progress`) that also keeps the tensors a strip
    draws, on the CPU: evaluate hands its `on_outcome` to the benchmark loop."""

    def __init__(self, k: int, progress: Any = None, budget: int = BUDGET):
        self.k, self.progress, self.budget = k, progress, budget
        self.tensors: dict[int, dict[str, Any]] = {}  # dataset index -> its tensors
        self.values: dict[str, dict[int, float]] = {"PAC": {}, "PLC": {}}
        self.bytes = 0

    def start(self, total: int, description: str) -> None:
        if self.progress is not None:
            self.progress.start(total, description)

    def update(self, rows: list[dict[str, Any]], skipped: list[int]) -> None:
        if self.progress is not None:
            self.progress.update(rows, skipped)
        self.on_batch(rows, skipped)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    def on_outcome(self, outcome: Any, ids: Any) -> None:
        parts = {"images": outcome.images, "images_adv": outcome.images_adv, "attackable": outcome.attackable,
                 "map_star": outcome.map_star, "map_star_adv": outcome.map_star_adv}
        parts = {key: t.detach().cpu() for key, t in parts.items()}
        for row, index in enumerate(ids.tolist()):
            if index not in self.tensors:  # a padded copy of the last image repeats its index
                self.tensors[index] = {key: t[row].clone() for key, t in parts.items()}
                self.bytes += sum(t.element_size() * t.nelement() for t in self.tensors[index].values())

    def on_batch(self, rows: list[dict[str, Any]], skipped: list[int]) -> None:
        for row in rows:
            for metric, values in self.values.items():
                value = float(row.get(metric, float("nan")))
                if value == value:  # NaN is never drawn
                    values[row["index"]] = value
        if self.bytes > self.budget:
            self._trim()

    def _trim(self) -> None:
        keep = set()
        for values in self.values.values():
            order = sorted(values, key=lambda i: (-values[i], i))
            keep |= set(order[:self.k]) | set(sorted(values, key=lambda i: (values[i], i))[:self.k])
        for index in [i for i in self.tensors if i not in keep]:
            dropped = self.tensors.pop(index)
            self.bytes -= sum(t.element_size() * t.nelement() for t in dropped.values())

    def pixels(self, mean: Any, std: Any, classes: list[str]) -> Any:
        """What is kept, as report.pixels.Pixels (None when nothing is)."""
        import torch

        from protobench.report.pixels import Pixels

        if not self.tensors:
            return None
        order = sorted(self.tensors)
        stacked = {key: torch.stack([self.tensors[i][key] for i in order]) for key in next(iter(self.tensors.values()))}
        return Pixels(indices=order, mean=tuple(mean), std=tuple(std), classes=[str(c) for c in classes],
                      source="kept by evaluate from the run itself (the very tensors its numbers were computed from)",
                      **stacked)


def select(pixels: Any, indices: list[int]) -> Any:
    """The rows of `pixels` for `indices` (all present), as a new Pixels."""
    from dataclasses import replace

    rows = [pixels.row(i) for i in indices]
    return replace(pixels, indices=list(indices), images=pixels.images[rows], images_adv=pixels.images_adv[rows],
                   attackable=pixels.attackable[rows], map_star=pixels.map_star[rows],
                   map_star_adv=pixels.map_star_adv[rows])


def merge(a: Any, b: Any) -> Any:
    """Two Pixels of the same run as one (a's rows first)."""
    import torch
    from dataclasses import replace

    return replace(a, indices=[*a.indices, *b.indices], **{
        key: torch.cat([getattr(a, key), getattr(b, key)])
        for key in ("images", "images_adv", "attackable", "map_star", "map_star_adv")})
