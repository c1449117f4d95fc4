"""What does `--seeds 0,1,2` cost against one seed? The demo model on the same --limit images, one seed
and three seeds, alternated --repeats times in one process (the model and data loaded once per run, as
evaluate does). Prints JSON: each run's wall time and the ratio of the medians (three seeds / one).

  python benchmarks/seeds_cost.py [--limit 32] [--repeats 2] [--out protobench-results/seeds-cost]
  python benchmarks/seeds_cost.py --smoke   # 2 images, 1 repeat, 2 steps
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from protobench.core.protocol import EvalProtocol
from protobench.run.evaluate import EvaluateConfig, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("protobench-results/seeds-cost"))
    parser.add_argument("--smoke", action="store_true", help="the smallest sizes: 2 images, 1 repeat, 2 steps")
    args = parser.parse_args()
    if args.smoke:
        args.limit, args.repeats, args.steps = 2, 1, 2
    from protobench.demo import DEMO_DATA, demo_checkpoint

    times: dict[str, list[float]] = {"1 seed": [], "3 seeds": []}
    for repeat in range(args.repeats):
        for name, seeds in (("1 seed", None), ("3 seeds", (0, 1, 2))):
            out = args.out / f"{repeat}-{len(seeds or [0])}"
            cfg = EvaluateConfig(ckpt=demo_checkpoint(), data=DEMO_DATA, out=str(out), limit=args.limit,
                                 protocol=EvalProtocol.make(seeds=seeds, steps=args.steps), overwrite=True,
                                 device="cpu")
            started = time.perf_counter()
            evaluate(cfg)
            times[name].append(round(time.perf_counter() - started, 2))
    ratio = statistics.median(times["3 seeds"]) / statistics.median(times["1 seed"])
    print(json.dumps({"limit": args.limit, "steps": args.steps, "wall_s": times, "ratio_3_to_1": round(ratio, 2)}))


if __name__ == "__main__":
    main()
