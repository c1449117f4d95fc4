"""A CPU batch's fixed-size chunks measured side by side, one core each.

On the CPU every model call takes a fixed number of images (forward.Runtime.chunk), so an
image's numbers depend only on the image. By default each call is split over torch's intra-op
threads, which wait for each other inside every operation: on a busy machine a descheduled
thread stalls them all. With `Runtime.threads` > 1 each thread takes whole chunks instead (clean
pass, attack steps, metrics), with torch's intra-op thread count set to 1 for the duration of
the loop, so an image's numbers are those of a one-thread run whatever the thread count
(docs/performance.md, Chunks side by side, for what it costs and saves).
Only adapters whose `concurrent` flag says their evidence is a pure function of the input run
this way (every built-in family); others run one call at a time on all of torch's threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

Measure = Callable[..., dict[str, torch.Tensor]]  # (x, y, ids, on_outcome) -> per-image tensors


def side_by_side(threads: int, chunk: int | None, concurrent: bool, compiled: bool) -> int:
    """How many chunks to measure at once: `threads` when the model runs in fixed chunks (the
    CPU), its adapter allows it and it is not compiled (torch.compile is not run from several
    threads); else 1."""
    return threads if chunk and concurrent and not compiled and threads > 1 else 1


@contextmanager
def chunk_workers(threads: int) -> Iterator[ThreadPoolExecutor | None]:
    """A pool of `threads` threads with torch's intra-op thread count at 1 (restored on exit);
    None, and nothing changed, for one thread."""
    if threads <= 1:
        yield None
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    # each thread also sets its own OpenMP thread count (a thread's first oneDNN call may come before
    # torch's lazy per-thread initialisation)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="protobench-chunk", initializer=torch.set_num_threads,
                              initargs=(1,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(saved)


def measure_chunks(pool: ThreadPoolExecutor | None, chunk: int | None, measure: Measure, x: torch.Tensor,
                   y: torch.Tensor, ids: torch.Tensor, on_outcome: Callable[..., None] | None) -> dict[str, torch.Tensor]:
    """measure(x, y, ids, on_outcome) for the batch, chunk by chunk on the pool when there is one.

    The results are concatenated in image order, and on_outcome sees each chunk's outcome in
    image order on the calling thread, after every chunk is measured."""
    if pool is None or chunk is None or len(x) <= chunk:
        return measure(x, y, ids, on_outcome)

    def one(start: int) -> tuple[dict[str, torch.Tensor], list[tuple[Any, torch.Tensor]]]:
        seen: list[tuple[Any, torch.Tensor]] = []
        keep = (lambda outcome, kept_ids: seen.append((outcome, kept_ids))) if on_outcome is not None else None
        end = start + chunk
        return measure(x[start:end], y[start:end], ids[start:end], keep), seen

    done = list(pool.map(one, range(0, len(x), chunk)))
    if on_outcome is not None:
        for _, seen in done:
            for outcome, kept_ids in seen:
                on_outcome(outcome, kept_ids)
    return {name: torch.cat([values[name] for values, _ in done]) for name in done[0][0]}
