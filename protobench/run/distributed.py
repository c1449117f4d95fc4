"""Several processes (GPUs or machines) under torchrun: each rank evaluates a shard of the images.

`torchrun --nproc-per-node N -m protobench evaluate ...` sets RANK / WORLD_SIZE / LOCAL_RANK.
Every image's numbers depend only on the image and the seed (protobench.core.rng), so sharding
changes nothing: rank 0 merges the ranks' partial logs into the same files a single
process writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share: every size-th item, starting at its rank."""
        return items[self.rank::self.size]


def world() -> World:
    """The torchrun world this process is part of (a world of one without torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(w: World, device) -> None:
    """Join the process group (nccl between GPUs, gloo on CPUs) once."""
    import torch.distributed as dist

    if w.size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def barrier(w: World) -> None:
    if w.size > 1:
        import torch.distributed as dist

        dist.barrier()

