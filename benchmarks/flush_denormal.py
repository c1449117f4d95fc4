"""Does flushing denormal floats to zero pay on the CPU? The demo's benchmark loop, with and without.

Arithmetic on denormal floats (nonzero, below float32's smallest normal 1.2e-38) is many
times slower on many CPUs; torch.set_flush_denormal(True) rounds them to 0 instead. This
times benchmark.run on the first N demo test images (default protocol: pgd, 40 steps) with
flushing on and off, in interleaved rounds (the fastest of each kept: a shared machine's load
moves), checks that both give the same per-image numbers, and with --count-subnormals counts
the denormal values every torch operation (forward and backward) produced. Prints JSON with
the CPU it ran on. Example:
  python benchmarks/flush_denormal.py --images 24 --repeat 3 --count-subnormals 8
  python benchmarks/flush_denormal.py --smoke   # 2 images, 2 steps, one round, 1 image counted: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter

import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.core.protocol import EvalProtocol
from protobench.data.imagelist import Subset
from protobench.demo import demo_checkpoint
from protobench.demo.shapes import ProtoShapes
from protobench.run import benchmark
from protobench.run.context import RunContext


class CountSubnormals(TorchDispatchMode):
    """Counts, per operation, the floating-point outputs that are denormal."""

    def __init__(self):
        super().__init__()
        self.found: Counter = Counter()
        self.values = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.values += t.numel()
                small = int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())
                if small:
                    self.found[str(func)] += small
        return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def timed(flush: bool, adapter, data, paths, protocol, context) -> tuple[float, pd.DataFrame]:
    torch.set_flush_denormal(flush)
    try:
        start = time.perf_counter()
        records, _ = benchmark.run(adapter, data, paths, protocol, context)
        return time.perf_counter() - start, pd.DataFrame(records)
    finally:
        torch.set_flush_denormal(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    parser.add_argument("--count-subnormals", type=int, default=0, metavar="N",
                        help="also count denormal outputs of every operation on N images (slow)")
    parser.add_argument("--smoke", action="store_true", help="2 images, 2 steps, one round, 1 image counted")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.steps, args.repeat, args.count_subnormals = 2, 2, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    adapter = ProtoPNetAdapter.load(str(demo_checkpoint()))
    test = ProtoShapes("test", adapter.info.mean, adapter.info.std)
    protocol = EvalProtocol.make(steps=args.steps)
    context = RunContext.resolve(adapter.device, adapter.info.input_size)
    timed(True, adapter, Subset(test, range(8)), test.paths, EvalProtocol.make(steps=2), context)  # warm-up
    seconds: dict[str, list[float]] = {"flush": [], "no_flush": []}
    tables = {}
    for _ in range(args.repeat):
        for name, flush in (("flush", True), ("no_flush", False)):
            t, tables[name] = timed(flush, adapter, Subset(test, range(args.images)), test.paths, protocol, context)
            seconds[name].append(round(t, 3))
    report = {
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__, "images": args.images, "steps": args.steps, "seconds": seconds,
        "no_flush_over_flush": round(min(seconds["no_flush"]) / min(seconds["flush"]), 3),
        "same_numbers": tables["flush"].equals(tables["no_flush"]),
    }
    if args.count_subnormals:
        with CountSubnormals() as counter:
            benchmark.run(adapter, Subset(test, range(args.count_subnormals)), test.paths, protocol, context)
        report["subnormal_count"] = {"images": args.count_subnormals, "float_outputs": counter.values,
                                     "subnormal": sum(counter.found.values()), "by_op": dict(counter.found)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
