"""What does the float64 prototype distance cost? Ratios against the float32 formula, same run.

The prototype layers compute |z|^2 - 2 z.p + |p|^2 in float64 (protobench.core.precision.
squared_distances). This times, in interleaved rounds (the fastest round of each kept, since a
shared machine's load moves), the float32 formula as the original code has it (conv(z^2, ones)
with one row of ones per prototype) against the float64 one:

  layer     the distance and the log similarity alone, forward + input gradient (what the attack
            takes), at the demo's shape (8 images, 32 x 8 x 8 latents, 12 prototypes) and the
            paper's CUB shape (64 images, 128 x 7 x 7, 2000 prototypes);
  evaluate  benchmark.run on the demo model and the first --images demo test images, default
            protocol (pgd, 40 steps): the whole evaluate loop;
  train     --batches batches (32 images) of a joint epoch from the demo weights, ProtoPNet's
            loss: what training and finetune pay.

Prints JSON with the CPU it ran on.  python benchmarks/distance_cost.py [--device cpu] [--rounds 3]
`--smoke`: one round, one repeat of each layer, 2 images, 2 steps, 1 batch (checks that it runs; times nothing).
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from protobench.core import precision

SHAPES = {"demo": (8, 32, 8, 12), "cub": (64, 128, 7, 2000)}  # batch, D, map side, prototypes


def float32_formula(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """The original code's arithmetic: float32, the patch sums through one row of ones per prototype."""
    with precision.full_precision(z):
        z, p = z.float(), prototypes.float()
        ones = torch.ones_like(p)
        return F.conv2d(z**2, ones) - 2 * F.conv2d(z, p) + (p**2).sum(dim=(1, 2, 3)).view(-1, 1, 1)


VARIANTS = {"float32": float32_formula, "float64": precision.squared_distances}


def layer_seconds(distance, shape, device, repeats: int) -> float:
    b, dim, side, num = shape
    gen = torch.Generator().manual_seed(0)
    z = torch.rand(b, dim, side, side, generator=gen).to(device).requires_grad_(True)
    p = torch.rand(num, dim, 1, 1, generator=gen).to(device)
    start = time.perf_counter()
    for _ in range(repeats):
        d = F.relu(distance(z, p))
        (grad,) = torch.autograd.grad(torch.log((d + 1) / (d + 1e-4)).amax(dim=(2, 3)).sum(), z)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


@contextmanager
def distance_in_use(distance):
    """The ProtoPNet adapter's distance replaced for the block (the timed variants run the same model)."""
    from protobench.adapters import protopnet

    saved = protopnet.squared_distances
    protopnet.squared_distances = distance
    try:
        yield
    finally:
        protopnet.squared_distances = saved


def evaluate_seconds(distance, adapter, data, paths, steps: int) -> float:
    from protobench.core.protocol import EvalProtocol
    from protobench.run import benchmark
    from protobench.run.context import RunContext

    context = RunContext.resolve(adapter.device, adapter.info.input_size, batch_size=32)
    with distance_in_use(distance):
        start = time.perf_counter()
        benchmark.run(adapter, data, paths, EvalProtocol.make(steps=steps), context)
    return time.perf_counter() - start


def train_seconds(distance, adapter, initial, data) -> float:
    from protobench.train.settings import TrainSettings
    from protobench.train.state import make_optimizer
    from protobench.train.trainer import run_epoch

    adapter.model.load_state_dict(initial)  # every timed epoch starts from the demo weights
    plan = TrainSettings(lambda_align=0.0, mask_aug=False).plan(adapter)
    joint = next(phase for phase in plan.phases if phase.name == "joint")
    with distance_in_use(distance):
        start = time.perf_counter()
        run_epoch(adapter, data, plan, 0, joint, make_optimizer(adapter, joint))
    return time.perf_counter() - start


def best_of(rounds: int, timers: dict) -> dict[str, float]:
    """Each timer once per round, in turn; the fastest round of each."""
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer())
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=48, help="demo test images for the evaluate timing (0: skip)")
    parser.add_argument("--steps", type=int, default=40, help="pgd steps of the evaluate timing")
    parser.add_argument("--batches", type=int, default=20, help="training batches for the train timing (0: skip)")
    parser.add_argument("--smoke", action="store_true",
                        help="one round, 2 images, 2 steps, 1 batch: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.images, args.steps, args.batches = 1, 2, 2, 1
    device = torch.device(args.device)
    report: dict = {"device": str(device), **(precision.machine() if device.type == "cpu" else
                                              {"gpu": torch.cuda.get_device_name(device)})}
    for label, shape in SHAPES.items():
        repeats = 1 if args.smoke else 20 if label == "demo" else 2
        best = best_of(args.rounds, {name: (lambda f=f: layer_seconds(f, shape, device, repeats))
                                     for name, f in VARIANTS.items()})
        report[f"layer_{label}_s"] = best
        report[f"layer_{label}_ratio"] = round(best["float64"] / best["float32"], 3)
    if args.images:
        from protobench.adapters.protopnet import ProtoPNetAdapter
        from protobench.data.imagelist import Subset
        from protobench.demo import demo_checkpoint
        from protobench.demo.shapes import ProtoShapes

        adapter = ProtoPNetAdapter.load(demo_checkpoint()).to(device)
        test = ProtoShapes("test", adapter.info.mean, adapter.info.std)
        data = Subset(test, range(args.images))
        best = best_of(args.rounds, {name: (lambda f=f: evaluate_seconds(f, adapter, data, test.paths, args.steps))
                                     for name, f in VARIANTS.items()})
        report["evaluate_images"] = args.images
        report["evaluate_s"] = best
        report["evaluate_ratio"] = round(best["float64"] / best["float32"], 3)
    if args.batches:
        from protobench.adapters.protopnet import ProtoPNetAdapter
        from protobench.demo import demo_checkpoint
        from protobench.demo.shapes import ProtoShapes

        adapter = ProtoPNetAdapter.load(demo_checkpoint()).to(device)
        initial = {k: v.clone() for k, v in adapter.model.state_dict().items()}
        train = ProtoShapes("train", adapter.info.mean, adapter.info.std)
        n = args.batches * 32
        data = torch.utils.data.TensorDataset(torch.stack([train[i][0] for i in range(n)]),
                                              torch.tensor(train.labels[:n]), torch.arange(n))
        best = best_of(args.rounds, {name: (lambda f=f: train_seconds(f, adapter, initial, data)) for name, f in VARIANTS.items()})
        report["train_images"] = n
        report["train_s"] = best
        report["train_ratio"] = round(best["float64"] / best["float32"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
