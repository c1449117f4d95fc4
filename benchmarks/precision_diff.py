"""How far are bf16 / fp16 results from fp32? Runs `protobench evaluate` on the built-in demo
(or --ckpt/--data) once per precision and prints JSON: each metric's mean per precision and
its difference from fp32, plus how often p* and the predictions agree per image.

  python benchmarks/precision_diff.py --device cuda
  python benchmarks/precision_diff.py --smoke --device cpu   # 2 images, 1 step: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
import torch

from protobench.core.protocol import EvalProtocol
from protobench.demo import DEMO_DATA, demo_checkpoint
from protobench.run.evaluate import EvaluateConfig, evaluate

METRICS = ("PAC", "PLC", "PRC")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--data", default=DEMO_DATA)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="fp32,tf32,bf16,fp16")
    parser.add_argument("--limit", type=int, default=None, help="images (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="pgd steps (default: the protocol's)")
    parser.add_argument("--smoke", action="store_true", help="2 images, 1 step: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.limit, args.steps = 2, 1
    protocol = EvalProtocol.make() if args.steps is None else EvalProtocol.make(steps=args.steps)

    frames, summaries = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            cfg = EvaluateConfig(ckpt=args.ckpt or demo_checkpoint(), data=args.data, out=str(Path(tmp) / precision),
                                 protocol=protocol, device=args.device, precision=precision, limit=args.limit)
            result = evaluate(cfg)
            frames[precision] = pd.read_csv(Path(tmp) / precision / "per_image.csv")
            summaries[precision] = {k: result["summary"][k] for k in
                                    ("PAC_mean", "PLC_mean", "PRC_mean", "acc_before", "acc_after")}
            summaries[precision]["wall_time_s"] = result["meta"]["wall_time_s"]
    base = frames["fp32"]
    report = {"device": args.device, "images": len(base), "summaries": summaries, "vs_fp32": {}}
    for precision, frame in frames.items():
        if precision == "fp32":
            continue
        report["vs_fp32"][precision] = {
            **{f"{m}_mean_diff": float(frame[m].mean() - base[m].mean()) for m in METRICS},
            **{f"{m}_abs_diff_per_image": float((frame[m] - base[m]).abs().mean()) for m in METRICS},
            "same_proto": float((frame["proto"] == base["proto"]).mean()),
            "same_pred_before": float((frame["pred_before"] == base["pred_before"]).mean()),
            "same_pred_after": float((frame["pred_after"] == base["pred_after"]).mean()),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
