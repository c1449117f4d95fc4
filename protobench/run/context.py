"""How this process runs an evaluation, resolved once: device, runtime, batch size, workers, world.

It is resolved in one place, `protobench.run.defaults.run_context`, after the model is loaded (the
CPU's automatic batch and chunk sizes depend on the model's input size): by the run, which records
it in meta.json and hands it to the benchmark loop, and by the report's re-run of a run's images,
from the settings meta.json recorded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from protobench.run.distributed import World
from protobench.run.forward import Runtime, auto_batch_size

MAX_AUTO_WORKERS = 8  # decoding processes feeding a GPU when --workers is not given


@dataclass(frozen=True)
class RunContext:
    """Everything about how (not what) this process evaluates."""

    device: torch.device
    runtime: Runtime  # precision, chunk, channels-last, compile
    batch_size: int  # images per loader batch (a GPU halves it on out-of-memory)
    workers: int  # image-decoding processes
    world: World = field(default_factory=World)  # torchrun ranks sharing the images

    @classmethod
    def resolve(cls, device: torch.device, input_size: int, *, batch_size: int | None = None,
                workers: int | None = None, precision: str = "fp32", compile: bool = False,
                world: World | None = None, chunk: int | None = None, threads: int | None = None) -> RunContext:
        """The context for a model of `input_size` px on `device`; None (or False) means the default.

        Defaults: batch 32 images of up to 224 px on the CPU (fewer for larger images), 256 on a GPU;
        no decoding processes on the CPU, up to 8 feeding a GPU; see Runtime.for_device.
        """
        if workers is None:
            workers = 0 if device.type == "cpu" else min(MAX_AUTO_WORKERS, os.cpu_count() or 1)
        return cls(device=device,
                   runtime=Runtime.for_device(device, input_size, precision=precision, compile=compile or None,
                                              chunk=chunk, threads=threads),
                   batch_size=batch_size if batch_size is not None else auto_batch_size(device, input_size),
                   workers=workers, world=world or World())

    def record(self) -> dict[str, Any]:
        """The fields meta.json keeps (docs/metrics.md, Output files)."""
        return {"device": str(self.device), "batch_size": self.batch_size, "workers": self.workers,
                "runtime": asdict(self.runtime), "processes": self.world.size}
