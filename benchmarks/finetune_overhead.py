"""What does the alignment loss cost per training epoch? (The paper reports about +40%.)

Times joint epochs of `protobench finetune` on the demo model and the demo train split
(1800 images, in memory), in one process, for:
  family        ProtoPNet's loss only (lambda 0)
  align         + the alignment loss (one more forward and backward pass, docs/compensation.md)
  adversarial   + the adversarial alignment loss (also `--adv-steps` crafting passes in eval mode)
each with and without masking augmentation. Variants take turns (`--repeats` rounds), each
epoch from the same demo weights, so a busy shared machine slows them alike; the median
seconds per epoch and the ratios to `family` are printed as JSON.

    python benchmarks/finetune_overhead.py [--repeats 3] [--batches N] [--device cpu]
    python benchmarks/finetune_overhead.py --smoke    # one round, 1 batch, 1 crafting step: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.core.precision import machine
from protobench.demo import demo_checkpoint
from protobench.run.evaluate import load_dataset
from protobench.train.data import in_memory
from protobench.train.settings import TrainSettings
from protobench.train.state import make_optimizer
from protobench.train.trainer import run_epoch

VARIANTS = {
    "family": {"lambda_align": 0.0},
    "align": {"lambda_align": 10.0},
    "adversarial": {"lambda_align": 10.0, "adversarial": True},
}


def time_epoch(settings: TrainSettings, data, device, batches: int | None) -> float:
    """Seconds of one joint epoch (or of its first `batches` batches) from the demo weights."""
    adapter = ProtoPNetAdapter.load(demo_checkpoint()).to(device)
    plan = settings.plan(adapter)
    joint = next(phase for phase in plan.phases if phase.name == "joint")
    optimizer = make_optimizer(adapter, joint)
    if batches is not None:
        data = torch.utils.data.TensorDataset(*(t[:batches * settings.batch_size] for t in data.tensors))
    started = time.perf_counter()
    run_epoch(adapter, data, plan, 0, joint, optimizer, settings.objective(adapter))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=None, help="time only the first N batches of each epoch")
    parser.add_argument("--adv-steps", type=int, default=TrainSettings().adv_steps)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true",
                        help="one round of 1 batch, 1 crafting step: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.batches, args.adv_steps = 1, 1, 1
    device = torch.device(args.device)
    data = in_memory(load_dataset("protoshapes:train", ProtoPNetAdapter.load(demo_checkpoint()).info)[0])
    seconds: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for aug in (False, True):
            for name, overrides in VARIANTS.items():
                settings = replace(TrainSettings(), mask_aug=aug, adv_steps=args.adv_steps, **overrides)
                key = f"{name}{'+aug' if aug else ''}"
                seconds.setdefault(key, []).append(time_epoch(settings, data, device, args.batches))
    median = {key: statistics.median(values) for key, values in seconds.items()}
    report = {
        "device": str(device), **(machine() if device.type == "cpu" else {"gpu": torch.cuda.get_device_name(device)}),
        "images_per_epoch": len(data) if args.batches is None
        else args.batches * TrainSettings().batch_size, "adv_steps": args.adv_steps, "repeats": args.repeats,
        "seconds_per_epoch": {k: round(v, 2) for k, v in median.items()},
        "all_seconds": {k: [round(v, 2) for v in values] for k, values in seconds.items()},
        "ratio_to_family": {k: round(v / median["family" + ("+aug" if k.endswith("+aug") else "")], 2)
                            for k, v in median.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
