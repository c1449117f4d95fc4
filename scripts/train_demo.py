"""Train the built-in demo model: a small ProtoPNet on the ProtoShapes train split.

    python scripts/train_demo.py [--seed 0] [--out protobench/demo/protoshapes.safetensors]

Trains with protobench's one training loop (protobench.train.trainer, the loop of
`protobench finetune`) on ProtoPNet's schedule (protobench.adapters._protopnet_training.schedule): warm-up,
joint, push, last layer. Writes the weights (protobench safetensors) and, beside them, a JSON
record of the model, the data design, the plan, the seed, the versions, the machine and the
measured accuracies, and the prototypes' source patches in the train split as the report caches
them (<name>-sources.json: protobench.report.sources.demo_sources). The same seed, torch version,
thread count and CPU kernels give the same weights (docs/demo.md gives the time).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from protobench import __version__
from protobench.adapters.protopnet import ProtoPNetAdapter, ProtoPNetConfig
from protobench.core.precision import machine
from protobench.demo import DEMO_CKPT
from protobench.demo.shapes import ProtoShapes, ShapesDesign
from protobench.api.progress import TrainProgress
from protobench.models.plan import Plan
from protobench.report.sources import write_demo_sources
from protobench.adapters._protopnet_training import schedule
from protobench.train.trainer import fit

MODEL = ProtoPNetConfig(
    backbone="tinycnn",
    backbone_kwargs={"channels": [16, 32, 64], "convs": 3},  # 3 convs per stage: a receptive field that reaches the stripes
    num_classes=6,
    num_prototypes=12,  # 2 per class
    prototype_dim=32,
    add_on="regular",
    img_size=64,
)
PHASES = schedule(warm=1, joint=12, last=4, lr_features=1e-3,  # the original: 1e-4, for ImageNet-pretrained backbones
                  lr_add_on=3e-3, lr_prototypes=3e-3, lr_last=1e-3, weight_decay=1e-3, step_size=8, gamma=0.1)


def materialize(split: str, design: ShapesDesign) -> torch.utils.data.TensorDataset:
    """Draw a whole split once (x, y, index), so epochs do not redraw the images."""
    data = ProtoShapes(split, MODEL.mean, MODEL.std, design)
    x = torch.stack([data[i][0] for i in range(len(data))])
    return torch.utils.data.TensorDataset(x, torch.tensor(data.labels), torch.arange(len(data)))


@torch.no_grad()
def accuracy(adapter: ProtoPNetAdapter, data: torch.utils.data.TensorDataset) -> float:
    x, y, _ = data.tensors
    logits = torch.cat([adapter(part)[1] for part in x.split(64)])
    return round(100.0 * float((logits.argmax(dim=1) == y).float().mean()), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the initial weights and the batch order")
    parser.add_argument("--out", type=Path, default=DEMO_CKPT, help="weights file; the record goes beside it (.json)")
    args = parser.parse_args()

    design = ShapesDesign()
    plan = Plan(PHASES, batch_size=32, seed=args.seed)
    train_set, test_set = materialize("train", design), materialize("test", design)
    adapter = ProtoPNetAdapter.from_config(MODEL, seed=args.seed)
    pushed: list = []
    started = time.perf_counter()
    log = fit(adapter, train_set, plan, progress=TrainProgress(), on_push=pushed.extend)
    seconds = time.perf_counter() - started
    record = {
        "trained_by": "scripts/train_demo.py",
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "model": asdict(MODEL),
        "design": design.as_dict(),
        "plan": plan.as_dict(),
        "trainer": "protobench.train.trainer.fit",
        "loss": "CE + 0.8 cluster - 0.08 separation + 1e-4 L1 (protobench.adapters._protopnet_training)",
        "torch_version": torch.__version__,
        "protobench_version": __version__,
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "train_seconds": round(seconds, 1),
        "train_accuracy": accuracy(adapter, train_set),
        "test_accuracy": accuracy(adapter, test_set),
        "test_images": len(test_set),
        "pushed_patches": [w and {"prototype": j, "image": w[0], "row": w[1], "col": w[2]} for j, w in enumerate(pushed)],
        "log": log,
    }
    adapter.save(str(args.out), extra={"trained_by": "scripts/train_demo.py", "seed": str(args.seed),
                                       "classes": json.dumps(design.classes)})  # checked against the data
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    sources = args.out.with_name(f"{args.out.stem}-sources.json")
    write_demo_sources(args.out, sources)  # the demo report's source patches, found once here
    print(f"test accuracy {record['test_accuracy']:.1f}% ({len(test_set)} images), trained in {seconds:.0f} s; "
          f"wrote {args.out}, {args.out.with_suffix('.json')} and {sources}")


if __name__ == "__main__":
    main()
