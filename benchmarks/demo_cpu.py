"""How long does `protobench evaluate` (the demo, no arguments) take on a CPU, and where does it go?

Two parts, printed as one JSON object with the CPU, its vector extensions and the load average:

  phases    in one process, the current code: import torch, import protobench's CLI and evaluate
            modules, load the demo model (the first load pays for imports torch makes lazily),
            draw the test images, the benchmark loop (--limit images, default protocol);
  end_to_end  `python -m protobench evaluate --overwrite --out DIR [--limit N]` in fresh processes,
            timed from outside (process start included) with the loop's own wall_time_s from
            meta.json; with --before REV the same for git revision REV (exported with git archive,
            run with PYTHONPATH), in interleaved rounds, fastest kept, so that the ratio
            after / before is measured under the same load; per-image differences are reported.

  kernels   (--kernels R) the demo model's forward + input gradient on 32 images, in model calls of
            8 or 32 images, NCHW or channels-last (NHWC) inputs, R interleaved rounds, fastest kept:
            the layout and chunk choice alone, in this process (set the environment yourself).

  layouts   (--layouts N) benchmark.run on the first N demo test images with NCHW and with
            channels-last inputs, in this process, interleaved (--rounds), and how far apart
            the per-image numbers are (set the environment yourself).

  flops     (--flops) the demo network's floating-point operations (torch.utils.flop_counter) per
            forward pass and per input-gradient pass of one image, and of the whole default loop
            (clean pass, 40 steps of forward + backward, the pass on the attacked image) on 150 images.

  side_by_side  (--side-by-side N) benchmark.run on the first N demo test images with one chunk at a
            time on all of torch's threads (--threads) and with --threads chunks side by side, one
            thread each (protobench.run.chunks, the default), interleaved (--rounds), and how far
            apart the per-image numbers are; and whether side by side equals a one-thread run.

The CPU kernels default to an AVX2-only machine (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)
and 2 threads, the reference machine of the demo's time target; --native keeps this CPU's own kernels.

  python benchmarks/demo_cpu.py --before main --rounds 2 [--limit 150]
  python benchmarks/demo_cpu.py --smoke     # every part once: 2 images (8 for kernels, 16 side by side), 2 steps, 1 thread, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
COMPARED = ("act_before", "PAC", "PLC", "PRC")

PHASES = r"""
import json, sys, time
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
import protobench.cli.app, protobench.run.evaluate
t.append(time.perf_counter())
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.demo import demo_checkpoint
adapter = ProtoPNetAdapter.load(demo_checkpoint())
t.append(time.perf_counter())
from protobench.demo.shapes import ProtoShapes
from protobench.data.imagelist import Subset
data = ProtoShapes("test", adapter.info.mean, adapter.info.std)
items = [data[i] for i in range(len(data))]
t.append(time.perf_counter())
from protobench.core.protocol import EvalProtocol
from protobench.run import benchmark
from protobench.run.context import RunContext
context = RunContext.resolve(adapter.device, adapter.info.input_size)
limit = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else len(data)
steps = int(sys.argv[2]) if len(sys.argv) > 2 else EvalProtocol.make().steps
benchmark.run(adapter, Subset(data, range(limit)), data.paths, EvalProtocol.make(steps=steps), context)
t.append(time.perf_counter())
names = ["import_torch", "import_protobench", "load_model", "draw_images", "loop"]
print(json.dumps({"images": limit, **{n: round(b - a, 3) for n, a, b in zip(names, t, t[1:])}}))
"""


def kernels(rounds: int, images: int = 32) -> dict:
    """Seconds for 3 x (forward + input gradient of 32 images) per call size and layout."""
    import torch

    from protobench.adapters.protopnet import ProtoPNetAdapter
    from protobench.demo import demo_checkpoint
    from protobench.run.forward import frozen_eval

    adapter = ProtoPNetAdapter.load(demo_checkpoint())
    x = torch.rand(images, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 4 - 2
    variants = {"chunk8_nchw": (8, False), "chunk32_nchw": (32, False), "chunk8_nhwc": (8, True),
                "chunk32_nhwc": (32, True)}

    def passes(chunk: int, nhwc: bool) -> None:
        for start in range(0, len(x), chunk):
            part = x[start:start + chunk]
            part = (part.contiguous(memory_format=torch.channels_last) if nhwc else part.clone()).requires_grad_(True)
            maps, _ = adapter.forward(part)
            torch.autograd.grad(maps.amax(dim=(2, 3))[:, 0].sum(), part)

    times: dict[str, list[float]] = {name: [] for name in variants}
    with frozen_eval(adapter.model):
        for args in variants.values():
            passes(*args)  # warm-up
        for _ in range(rounds):
            for name, args in variants.items():
                start = time.perf_counter()
                for _ in range(3):
                    passes(*args)
                times[name].append(time.perf_counter() - start)
    best = {name: round(min(t), 3) for name, t in times.items()}
    return {"threads": torch.get_num_threads(), "kernels": torch.backends.cpu.get_cpu_capability(), "best_s": best,
            "nhwc_over_nchw_chunk8": round(best["chunk8_nhwc"] / best["chunk8_nchw"], 3)}


def layouts(limit: int, rounds: int, steps: int | None = None) -> dict:
    """The whole loop on `limit` demo images, NCHW against channels-last inputs; seconds and differences."""
    import pandas as pd
    import torch

    from protobench.adapters.protopnet import ProtoPNetAdapter
    from protobench.core.protocol import EvalProtocol
    from protobench.data.imagelist import Subset
    from protobench.demo import demo_checkpoint
    from protobench.demo.shapes import ProtoShapes
    from protobench.run import benchmark
    from protobench.run.context import RunContext
    from protobench.run.forward import Runtime

    adapter = ProtoPNetAdapter.load(demo_checkpoint())
    data = ProtoShapes("test", adapter.info.mean, adapter.info.std)
    times: dict[str, list[float]] = {"nchw": [], "nhwc": []}
    records = {}
    for _ in range(rounds):
        for name in times:
            context = RunContext(torch.device("cpu"), Runtime(chunk=8, channels_last=name == "nhwc"), 32, 0)
            start = time.perf_counter()
            protocol = EvalProtocol.make() if steps is None else EvalProtocol.make(steps=steps)
            records[name], _ = benchmark.run(adapter, Subset(data, range(limit)), data.paths, protocol, context)
            times[name].append(round(time.perf_counter() - start, 2))
    a, b = pd.DataFrame(records["nchw"]), pd.DataFrame(records["nhwc"])
    return {"threads": torch.get_num_threads(), "kernels": torch.backends.cpu.get_cpu_capability(), "images": limit,
            "seconds": times, "nhwc_over_nchw": round(min(times["nhwc"]) / min(times["nchw"]), 3),
            **{f"max_abs_diff_{c}": float((a[c] - b[c]).abs().max()) for c in COMPARED},
            **{f"mean_diff_{c}": float(b[c].mean() - a[c].mean()) for c in COMPARED},
            "same_p_star": bool((a.proto == b.proto).all()), "same_pred_after": float((a.pred_after == b.pred_after).mean())}


def export(rev: str, into: Path) -> Path:
    """Revision `rev` of this repository as a directory importable with PYTHONPATH."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "protobench" / "adapters").symlink_to(into / "adapters")  # installed as protobench.adapters
    return into


def end_to_end(name: str, env: dict[str, str], out: Path, limit: int | None, steps: int | None = None) -> dict:
    command = [sys.executable, "-m", "protobench", "evaluate", "--overwrite", "--out", str(out)]
    command += ["--limit", str(limit)] if limit else []
    command += ["--steps", str(steps)] if steps else []
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=out.parent)
    wall = time.perf_counter() - start
    meta = json.loads((out / "meta.json").read_text())
    return {"version": name, "end_to_end_s": round(wall, 2), "loop_s": round(meta["wall_time_s"], 2)}


def compare(before: Path, after: Path) -> dict:
    """How far apart the two runs' per-image numbers are, on the images both evaluated (the demo's subset
    may differ between versions: the rows are matched by their `index`)."""
    import pandas as pd

    a, b = (pd.read_csv(d / "per_image.csv").set_index("index") for d in (before, after))
    common = a.index.intersection(b.index)
    diff = {"images_before": len(a.index), "images_current": len(b.index), "images_compared": len(common)}
    a, b = a.loc[common], b.loc[common]
    shared = [c for c in b.columns if c in a.columns]
    diff.update({f"max_abs_diff_{c}": float((a[c] - b[c]).abs().max()) for c in COMPARED})
    diff.update({f"mean_diff_{c}": float(b[c].mean() - a[c].mean()) for c in COMPARED})
    diff.update(same_p_star=bool((a.proto == b.proto).all()), same_pred_after=float((a.pred_after == b.pred_after).mean()),
                identical_rows=bool((a[shared].astype(str) == b[shared].astype(str)).all().all()),
                columns_compared=len(shared))
    return diff


def flops() -> dict:
    """Floating-point operations of the demo network: a forward pass, an input-gradient pass, the loop."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from protobench.adapters.protopnet import ProtoPNetAdapter
    from protobench.core.protocol import EvalProtocol
    from protobench.demo import demo_checkpoint
    from protobench.run.forward import frozen_eval

    adapter = ProtoPNetAdapter.load(demo_checkpoint())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with frozen_eval(adapter.model):
        with FlopCounterMode(display=False) as counter:
            maps, _ = adapter.forward(x)
        forward = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            torch.autograd.grad(maps.amax(dim=(2, 3))[:, 0].sum(), x)
        backward = counter.get_total_flops()
    steps = EvalProtocol.make().steps
    per_image = (steps + 2) * forward + steps * backward
    return {"forward_gflop": round(forward / 1e9, 4), "input_gradient_gflop": round(backward / 1e9, 4),
            "loop_gflop_per_image": round(per_image / 1e9, 3), "loop_tflop_150_images": round(150 * per_image / 1e12, 3)}


def side_by_side(limit: int, rounds: int, threads: int, steps: int | None = None) -> dict:
    """The loop on `limit` demo images: one chunk at a time on `threads` threads against `threads`
    chunks side by side; seconds, differences, and equality with one thread."""
    import pandas as pd
    import torch

    from protobench.adapters.protopnet import ProtoPNetAdapter
    from protobench.core.protocol import EvalProtocol
    from protobench.data.imagelist import Subset
    from protobench.demo import demo_checkpoint
    from protobench.demo.shapes import ProtoShapes
    from protobench.run import benchmark
    from protobench.run.context import RunContext
    from protobench.run.forward import Runtime

    torch.set_num_threads(threads)
    adapter = ProtoPNetAdapter.load(demo_checkpoint())
    data = ProtoShapes("test", adapter.info.mean, adapter.info.std)
    protocol = EvalProtocol.make() if steps is None else EvalProtocol.make(steps=steps)
    variants = {"one_at_a_time": 1, "side_by_side": threads}
    times: dict[str, list[float]] = {name: [] for name in variants}
    records = {}
    for _ in range(rounds):
        for name, count in variants.items():
            context = RunContext(torch.device("cpu"), Runtime(chunk=8, threads=count), 32, 0)
            start = time.perf_counter()
            records[name], _ = benchmark.run(adapter, Subset(data, range(limit)), data.paths, protocol, context)
            times[name].append(round(time.perf_counter() - start, 2))
    torch.set_num_threads(1)
    one, _ = benchmark.run(adapter, Subset(data, range(limit)), data.paths, protocol,
                           RunContext(torch.device("cpu"), Runtime(chunk=8, threads=1), 32, 0))
    a, b = pd.DataFrame(records["one_at_a_time"]), pd.DataFrame(records["side_by_side"])
    return {"threads": threads, "kernels": torch.backends.cpu.get_cpu_capability(), "images": limit,
            "seconds": times, "side_by_side_over_one_at_a_time": round(min(times["side_by_side"])
                                                                      / min(times["one_at_a_time"]), 3),
            **{f"max_abs_diff_{c}": float((a[c] - b[c]).abs().max()) for c in COMPARED},
            "same_p_star": bool((a.proto == b.proto).all()),
            "side_by_side_equals_one_thread": b.equals(pd.DataFrame(one))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=None, metavar="REV", help="a git revision to measure against")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None,
                        help="images (default: the demo's own subset end to end, all 150 for the phases)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--native", action="store_true", help="this CPU's own kernels, not AVX2 only")
    parser.add_argument("--steps", type=int, default=None, help="pgd steps (default: the protocol's 40)")
    parser.add_argument("--skip-phases", action="store_true")
    parser.add_argument("--kernels", type=int, default=0, metavar="R", help="only the layout/chunk timing, R rounds")
    parser.add_argument("--layouts", type=int, default=0, metavar="N", help="only the loop, NCHW vs NHWC, N images")
    parser.add_argument("--flops", action="store_true", help="only the demo network's operation count")
    parser.add_argument("--side-by-side", type=int, default=0, metavar="N",
                        help="only the loop, one chunk at a time vs side by side, N images")
    parser.add_argument("--smoke", action="store_true",
                        help="phases, end to end, kernels and layouts, each once on 2 images (8 for kernels), "
                             "2 steps, 1 thread: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.before, args.rounds, args.limit, args.steps, args.threads, args.skip_phases = None, 1, 2, 2, 1, False
    if args.kernels:
        print(json.dumps(kernels(args.kernels), indent=2))
        return
    if args.layouts:
        print(json.dumps(layouts(args.layouts, args.rounds), indent=2))
        return
    if args.flops:
        print(json.dumps(flops(), indent=2))
        return
    if args.side_by_side:
        print(json.dumps(side_by_side(args.side_by_side, args.rounds, args.threads, args.steps), indent=2))
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **({} if args.native else AVX2)}
    env.pop("PYTHONPATH", None)
    from protobench.core.precision import machine

    probe = "import json, torch; print(json.dumps(torch.backends.cpu.get_cpu_capability()))"
    capability = json.loads(subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True,
                                        text=True).stdout)
    report = {"machine": {**machine(), "torch_cpu_capability": capability, "torch_threads": args.threads},
              "load_average_start": os.getloadavg(), "command": "python -m protobench evaluate --overwrite"}
    if not args.skip_phases:
        argv = [str(args.limit or ""), *([str(args.steps)] if args.steps else [])]
        phases = subprocess.run([sys.executable, "-c", PHASES, *argv], env=env,
                                check=True, capture_output=True, text=True, cwd=ROOT).stdout
        report["phases"] = json.loads(phases)
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"current": env}
        if args.before:
            (Path(tmp) / "before-src").mkdir()
            old = export(args.before, Path(tmp) / "before-src")
            versions = {"before": {**env, "PYTHONPATH": str(old)}, "current": env}
        runs: dict[str, list[dict]] = {name: [] for name in versions}
        for _ in range(args.rounds):  # interleaved: a shared machine's load moves
            for name, version_env in versions.items():
                runs[name].append(end_to_end(name, version_env, Path(tmp) / name, args.limit, args.steps))
        report["end_to_end"] = runs
        best = {name: min(r["end_to_end_s"] for r in rs) for name, rs in runs.items()}
        report["fastest_end_to_end_s"] = best
        if args.before:
            report["current_over_before"] = round(best["current"] / best["before"], 3)
            report["loop_current_over_before"] = round(min(r["loop_s"] for r in runs["current"])
                                                       / min(r["loop_s"] for r in runs["before"]), 3)
            report["numbers"] = compare(Path(tmp) / "before", Path(tmp) / "current")
    if args.smoke:
        report["kernels"], report["layouts"] = kernels(1, images=8), layouts(2, 1, args.steps)
        report["side_by_side"] = side_by_side(16, 1, 2, args.steps)
        report["flops"] = flops()
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
