"""Fine-tune the demo model under several settings and evaluate each under both protocols.

    python scripts/finetune_ablation.py [--out protobench-results/ablation] [--runs NAME ...]
                                        [--set key=value ...] [--tag SUFFIX]

Each run is `protobench finetune --no-eval` with the run's options (its library call), then
`protobench evaluate --ckpt OUT/NAME/model.safetensors --data protoshapes` under the default
protocol (pgd) and `--protocol reference` (noise). One row per run and protocol is appended to
OUT/results.csv as soon as it is measured; runs already there are skipped, so an interrupted
sweep continues where it stopped. `baseline` evaluates the demo model itself.
`--set` overrides settings of every selected run (e.g. --set epochs=5), `--tag` names them apart.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from protobench.core.protocol import EvalProtocol
from protobench.demo import demo_checkpoint
from protobench.run.evaluate import EvaluateConfig, evaluate
from protobench.train.finetune import FinetuneConfig, finetune
from protobench.train.settings import TrainSettings

PLAIN, ADV = {"adversarial": False}, {"adversarial": True}
RUNS = {  # name -> TrainSettings overrides (the rest: protobench finetune's defaults)
    "baseline": None,
    "lam0-noaug": {"lambda_align": 0, "mask_aug": False},
    "lam0-aug": {"lambda_align": 0, "mask_aug": True},
    **{f"lam{lam}-{'aug' if aug else 'noaug'}-{kind}": {"lambda_align": lam, "mask_aug": aug, **extra}
       for kind, extra in (("plain", PLAIN), ("adv", ADV)) for lam in (1, 3, 10) for aug in (False, True)},
}
PROTOCOLS = {"pgd": "default", "noise": "reference"}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def measure(name: str, ckpt: str, out: Path, settings: dict | None, train_seconds: float | None) -> list[dict]:
    rows = []
    for label, protocol in PROTOCOLS.items():
        result = evaluate(EvaluateConfig(ckpt=ckpt, data="protoshapes", out=str(out / f"eval-{label}"),
                                         adapter="auto", protocol=EvalProtocol.make(protocol), name=name, overwrite=True))
        s = result["summary"]
        rows.append({"run": name, "protocol": label, "acc": s["acc_before"], "acc_attacked": s["acc_after"],
                     "PAC": s["PAC_mean"], "PLC": s["PLC_mean"], "PRC": s["PRC_mean"],
                     "PAC_ci": f"[{s['PAC_ci_low']:.2f}, {s['PAC_ci_high']:.2f}]",
                     "PLC_ci": f"[{s['PLC_ci_low']:.2f}, {s['PLC_ci_high']:.2f}]",
                     "train_seconds": train_seconds, "settings": json.dumps(settings, sort_keys=True)})
    return rows


def run(name: str, overrides: dict | None, base: dict, out: Path) -> list[dict]:
    if overrides is None:
        return measure(name, demo_checkpoint(), out / name, None, None)
    settings = replace(TrainSettings(), **{**overrides, **base})
    started = time.perf_counter()
    result = finetune(FinetuneConfig(out=str(out / name), evaluate=False, settings=settings, overwrite=True))
    seconds = sum(row["seconds"] for row in result["log"])
    print(f"{name}: trained in {seconds:.0f} s ({time.perf_counter() - started:.0f} s wall)", flush=True)
    return measure(name, result["model"], out / name, settings.as_dict(), round(seconds, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("protobench-results/ablation"))
    parser.add_argument("--runs", nargs="*", default=list(RUNS), help=f"any of: {', '.join(RUNS)}")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainSettings overrides")
    parser.add_argument("--tag", default="", help="suffix of the run names (for --set variants)")
    args = parser.parse_args()
    base = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    table = args.out / "results.csv"
    done = set(pd.read_csv(table)["run"]) if table.is_file() else set()
    for name in args.runs:
        full = name + args.tag
        if full in done:
            continue
        rows = run(full, RUNS[name], base, args.out)
        frame = pd.DataFrame(rows)
        frame.to_csv(table, mode="a", header=not table.is_file(), index=False)
        print(frame.drop(columns=["settings"]).to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
