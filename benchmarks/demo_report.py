"""What the demo's report costs, drawn from the run's own tensors against re-run from the checkpoint.

In one process, on the built-in demo (default protocol): the benchmark loop with the tensors kept
(report.kept.Keeper), then `build_report` three times: from the kept tensors with no source-patch
cache (what the first `protobench evaluate` does), again with the cache (every later
`evaluate --overwrite` into the same directory), and by re-running the drawn images from the
verified checkpoint (what `protobench report RUN_DIR` does). Prints JSON: wall and CPU seconds of
each phase and their ratios (CPU time is what a busy machine inflates least).

    python benchmarks/demo_report.py                 # all 150 demo test images
    python benchmarks/demo_report.py --limit 24      # a quicker loop; the report phases draw as many images
    python benchmarks/demo_report.py --smoke         # 4 images, 2 steps: does it run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def timed(fn, *args, **kwargs) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="4 images, 2 pgd steps: only checks that it runs")
    args = parser.parse_args()
    import torch

    from protobench.core.protocol import EvalProtocol
    from protobench.demo import DEMO_DATA, demo_checkpoint
    from protobench.report.build import Options, build_report
    from protobench.report.kept import Keeper
    from protobench.run.evaluate import EvaluateConfig, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        keeper = Keeper(3)
        limit = 4 if args.smoke else args.limit
        cfg = EvaluateConfig(ckpt=demo_checkpoint(), data=DEMO_DATA, out=str(out), limit=limit,
                             protocol=EvalProtocol(steps=2) if args.smoke else EvalProtocol())
        phases = {"loop": timed(evaluate, cfg, keeper)}
        kept = {str(out.resolve()): keeper}
        phases["report_kept_first"] = timed(build_report, [str(out)], Options(out=str(out / "r1"), up_to=True,
                                                                              kept=kept))
        # into the same directory: the source-patch cache lives in the report's own directory
        phases["report_kept_cached"] = timed(build_report, [str(out)], Options(out=str(out / "r1"), up_to=True,
                                                                               kept=kept))
        phases["report_rerun_cached"] = timed(build_report, [str(out)], Options(out=str(out / "r1"), up_to=True))
    cpu = {name: phase["cpu_s"] for name, phase in phases.items()}
    print(json.dumps({
        "images": limit or 150, "steps": cfg.protocol.steps, "phases": phases,
        "kept_cached_over_rerun_cpu": round(cpu["report_kept_cached"] / cpu["report_rerun_cached"], 3),
        "kept_first_over_rerun_cpu": round(cpu["report_kept_first"] / cpu["report_rerun_cached"], 3),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "load_average": [round(x, 1) for x in os.getloadavg()], "torch": torch.__version__,
        "kernels": torch.backends.cpu.get_cpu_capability(),
    }, indent=1))


if __name__ == "__main__":
    main()
