"""What do consistency and stability cost next to the misalignment benchmark?

Times, in interleaved rounds (fastest of each kept), on the same model, images, batch size, device:
  (a) misalignment   benchmark.run with the attack alone (pgd, 40 steps): `evaluate` by default;
  (b) part metrics   benchmark.run with consistency and stability alone (--metrics consistency,stability);
  (c) the scorecard  all three in one run (--metrics misalignment,consistency,stability).
Images are synthetic (a pool of random images in memory) with 15 random keypoints each (CUB's part
count), so the figures are compute. Prints JSON with b / a, (c - a) / a and the seconds per image of
each, and those seconds times 5,794 (CUB-200-2011's test split); on the CPU also the process's CPU
seconds (`cpu_seconds`), which other work on a shared machine disturbs far less than wall time.
Examples:
  python benchmarks/scorecard_cost.py --model demo --device cpu
  python benchmarks/scorecard_cost.py --model resnet34 --device cpu --images 16 --repeat 1
  python benchmarks/scorecard_cost.py --model resnet34 --device cuda --precision bf16 --images 1024
  python benchmarks/scorecard_cost.py --smoke --device cpu   # smallest network, 4 images, 2 steps: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from attack_throughput import SyntheticImages, build_model, sync  # benchmarks/: run from the repository root
from protobench.core.protocol import EvalProtocol
from protobench.run import partpass
from protobench.run.benchmark import run
from protobench.run.context import RunContext
from protobench.run.forward import Runtime

CUB_TEST_IMAGES = 5794
SUITES = {"a": ("misalignment",), "b": ("consistency", "stability"), "c": ("misalignment", "consistency", "stability")}


def keypoints(n: int, parts: int, size: int, device) -> torch.Tensor:
    """(n, parts, 3) random keypoints in the input, about 3 in 4 visible (CUB shows 11 of 15 on average)."""
    g = torch.Generator().manual_seed(0)
    uv = torch.randint(0, size, (n, parts, 2), generator=g)
    visible = (torch.rand(n, parts, 1, generator=g) < 0.75).long()
    return torch.cat([uv, visible], dim=-1).to(device)


def time_run(adapter, data, protocol, context, passes) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one benchmark.run."""
    paths = [f"synthetic/{i}" for i in range(len(data))]
    sync(adapter.device)
    start, cpu = time.perf_counter(), time.process_time()
    records, _ = run(adapter, data, paths, protocol, context, passes=passes)
    sync(adapter.device)
    assert len(records) == len(data)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="demo, tiny, smoke or resnet34 (random weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 256 on GPU")
    parser.add_argument("--images", type=int, default=None, help="default: 64 CPU, 1024 GPU")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--parts", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the fastest of each is kept")
    parser.add_argument("--label", default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest sizes, whatever the options above say: checks that it runs, times nothing")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.images, args.steps, args.batch_size, args.repeat = "smoke", 4, 2, 4, 1

    device = torch.device(args.device)
    torch.manual_seed(0)
    adapter = build_model(args.model, None).to(device)
    size = adapter.info.input_size
    n = args.images or (1024 if device.type == "cuda" else 64)
    data = SyntheticImages(n, size, adapter.info.num_classes)
    runtime = Runtime.for_device(device, size, precision=args.precision)
    context = RunContext(device, runtime, args.batch_size or (256 if device.type == "cuda" else 32), 0)
    protocol = EvalProtocol.make(steps=args.steps)
    found = keypoints(n, args.parts, size, device)

    def passes(suites):
        parts = _Found(found) if partpass.part_columns(suites) else None
        return partpass.plan(suites, partpass.PartSettings(), adapter, parts, protocol.seed)

    warm = SyntheticImages(min(context.batch_size, n), size, adapter.info.num_classes)
    time_run(adapter, warm, EvalProtocol.make(steps=1), context, passes(SUITES["c"]))  # warm-up
    rounds: dict[str, list[float]] = {k: [] for k in SUITES}
    cpu_rounds: dict[str, list[float]] = {k: [] for k in SUITES}
    for _ in range(args.repeat):
        for key, suites in SUITES.items():
            wall, cpu = time_run(adapter, data, protocol, context, passes(suites))
            rounds[key].append(wall)
            cpu_rounds[key].append(cpu)
    a, b, c = (min(rounds[k]) for k in "abc")
    ca, cb, cc = (min(cpu_rounds[k]) for k in "abc")
    print(json.dumps({
        "label": args.label, "model": args.model, "device": str(device), "precision": args.precision,
        "threads": torch.get_num_threads(), "batch_size": context.batch_size, "images": n, "steps": args.steps,
        "parts": args.parts, "seconds": {"misalignment": a, "parts": b, "all": c}, "rounds_s": rounds,
        "parts_over_misalignment": b / a, "added_to_misalignment": (c - a) / a,
        "cub_test_split_s": {k: v / n * CUB_TEST_IMAGES for k, v in (("misalignment", a), ("parts", b), ("all", c))},
        "cpu_seconds": {"misalignment": ca, "parts": cb, "all": cc, "parts_over_misalignment": cb / ca,
                        "added_to_misalignment": (cc - ca) / ca},
        "torch": torch.__version__,
    }, indent=2))


class _Found:
    """The shape partpass.plan reads keypoints from (protobench.data.parts.PartLocations)."""

    def __init__(self, table: torch.Tensor):
        self.table = table.cpu().numpy()


if __name__ == "__main__":
    main()
