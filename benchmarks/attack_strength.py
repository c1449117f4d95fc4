"""How far is the default attack (pgd, 40 steps of 0.01 in an L-inf ball of 0.4) from the worst case
under the same budget and region? The same images attacked by pgd and by APGD (AutoAttack's step-size
schedule, the same 40 iterations), for several seeds, on the demo model and tiny models of other
families (random weights, random 32 px images: their numbers say how the attacks compare, not how
aligned those families are).

Prints one JSON object: per model and seed, the PAC and PLC means of both attacks, the gap (APGD - pgd)
with its paired bootstrap 95% interval over the images, and both attacks' wall times; per model the
mean and standard deviation of the gap over the seeds. Each row also goes to stderr as it is done.

  python benchmarks/attack_strength.py [--limit 40] [--seeds 0,1,2] [--families tesnet,protopool]
                                        [--restarts 1] [--out protobench-results/attack-strength]
  python benchmarks/attack_strength.py --smoke   # 2 demo images, seed 0, tiny TesNet, 2 steps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from protobench.core.metrics import METRICS
from protobench.core.protocol import EvalProtocol
from protobench.run import paired
from protobench.run.evaluate import EvaluateConfig, evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def tiny_model(family: str, out: Path) -> tuple[str, str]:
    """A tiny random model of `family` and an image folder with one class folder per class."""
    from conftest import write_image_folder

    from protobench.models.lookup import get_adapter

    adapter = get_adapter(family).tiny(seed=0)
    ckpt = out / f"{family}.safetensors"
    adapter.save(str(ckpt))
    data = out / f"{family}-data"
    if not data.exists():
        write_image_folder(data, classes=adapter.info.num_classes, per_class=10, size=adapter.info.input_size)
    return str(ckpt), str(data)


def run(ckpt: str, data: str, out: Path, protocol: EvalProtocol, limit: int | None) -> tuple[pd.DataFrame, float]:
    cfg = EvaluateConfig(ckpt=ckpt, data=data, out=str(out), protocol=protocol, limit=limit, overwrite=True,
                         device="cpu")
    started = time.perf_counter()
    evaluate(cfg)
    return pd.read_csv(out / "per_image.csv"), time.perf_counter() - started


def gap(pgd: pd.DataFrame, apgd: pd.DataFrame) -> dict:
    idx = paired.draws(len(pgd))
    row = {}
    for name in ("PAC", "PLC"):
        found = paired.paired(METRICS.get(name), pgd, apgd, idx)
        row.update({f"{name}_pgd": found.base, f"{name}_apgd": found.new, f"{name}_gap": found.delta,
                    f"{name}_gap_ci": [found.ci_low, found.ci_high]})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--families", default="tesnet,protopool")
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("protobench-results/attack-strength"))
    parser.add_argument("--smoke", action="store_true", help="the smallest sizes: 2 demo images, one seed, "
                                                              "one tiny family, 2 steps")
    args = parser.parse_args()
    if args.smoke:
        args.limit, args.seeds, args.families, args.steps = 2, "0", "tesnet", 2
    from protobench.demo import DEMO_DATA, demo_checkpoint

    args.out.mkdir(parents=True, exist_ok=True)
    models = {"demo": (demo_checkpoint(), DEMO_DATA, args.limit)}
    for family in filter(None, args.families.split(",")):
        models[family] = (*tiny_model(family, args.out), None)
    rows = []
    for name, (ckpt, data, limit) in models.items():
        for seed in [int(s) for s in args.seeds.split(",")]:
            base = EvalProtocol.make(seed=seed, steps=args.steps)
            pgd, t_pgd = run(ckpt, data, args.out / f"{name}-pgd-{seed}", base, limit)
            strong = replace(base, attack="apgd", restarts=args.restarts)
            apgd, t_apgd = run(ckpt, data, args.out / f"{name}-apgd-{seed}", strong, limit)
            rows.append({"model": name, "seed": seed, "images": len(pgd), **gap(pgd, apgd),
                         "wall_s_pgd": round(t_pgd, 1), "wall_s_apgd": round(t_apgd, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    frame = pd.DataFrame(rows)
    spread = {name: {f"{m}_gap_{stat}": float(getattr(np, stat)(group[f"{m}_gap"], **({"ddof": 1} if stat == "std"
                                                                                      else {})))
                     for m in ("PAC", "PLC") for stat in ("mean", "std")}
              for name, group in frame.groupby("model", sort=False)}
    print(json.dumps({"restarts": args.restarts, "limit_demo": args.limit, "steps": args.steps, "rows": rows,
                      "by_model": spread}, indent=1))


if __name__ == "__main__":
    main()
