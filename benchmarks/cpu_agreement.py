"""Do thread count, CPU kernels, process layout or compilation change the numbers? The same
evaluation under each setting, compared.

Runs `protobench evaluate` (the demo model and data unless --ckpt / --data) in a fresh process per
setting: the default threads and kernels, one thread, AVX2 kernels (ATEN_CPU_CAPABILITY=avx2 and
ONEDNN_MAX_CPU_ISA=AVX2 on a CPU with AVX-512), both, torchrun with 2 ranks (one thread each),
--compile, and --chunk-threads 2 (chunks side by side, one thread each); --settings picks some
('default' always runs, as the base). Prints JSON: per setting, against 'default', the largest
difference of each clean-side value (activation of p*, protected box share), how many images
changed p* or a prediction, and the difference of the PAC / PLC / PRC means.

  python benchmarks/cpu_agreement.py [--limit 150] [--steps 40] [--out protobench-results/agreement]
  python benchmarks/cpu_agreement.py --smoke     # 2 images, 1 step, default against 1 thread: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
SETTINGS = {  # name -> (environment, launcher arguments before `-m protobench`, evaluate arguments)
    "default": ({}, [], []), "1 thread": ({"OMP_NUM_THREADS": "1"}, [], []), "avx2": (AVX2, [], []),
    "avx2, 1 thread": ({**AVX2, "OMP_NUM_THREADS": "1"}, [], []),
    "torchrun, 2 ranks": ({"OMP_NUM_THREADS": "1"}, TORCHRUN, []), "compile": ({}, [], ["--compile"]),
    "chunk threads 2": ({}, [], ["--chunk-threads", "2"]),
}
CLEAN = ("act_before", "protected_frac")
CHOICES = ("proto", "pred_before", "pred_after")
METRICS = ("PAC", "PLC", "PRC")


def evaluate(name: str, setting, args) -> pd.DataFrame:
    env, launcher, extra = setting
    out = args.out / name.replace(", ", "-").replace(" ", "-")
    command = [sys.executable, *launcher, "-m", "protobench", "evaluate", "--out", str(out), "--overwrite",
               "--limit", str(args.limit), "--steps", str(args.steps), *extra]
    command += ["--ckpt", args.ckpt, "--data", args.data] if args.ckpt else []
    probe = "import json, torch; print(json.dumps([torch.get_num_threads(), torch.backends.cpu.get_cpu_capability()]))"
    full_env = {**os.environ, **env}
    threads, capability = json.loads(subprocess.run([sys.executable, "-c", probe], env=full_env, check=True,
                                                    capture_output=True, text=True).stdout)
    subprocess.run(command, env=full_env, check=True, stdout=subprocess.DEVNULL)
    frame = pd.read_csv(out / "per_image.csv").sort_values("index").reset_index(drop=True)
    frame.attrs["setting"] = {"threads": threads, "torch_cpu_capability": capability}
    return frame


def compare(frame: pd.DataFrame, base: pd.DataFrame) -> dict:
    row = {**frame.attrs["setting"]}
    row.update({f"max_abs_diff_{c}": float((frame[c] - base[c]).abs().max()) for c in CLEAN + ("act_after",)})
    row.update({f"images_changed_{c}": int((frame[c] != base[c]).sum()) for c in CHOICES})
    row.update({f"{m}_mean_diff": float(frame[m].mean() - base[m].mean()) for m in METRICS})
    row.update({f"{m}_max_abs_diff_per_image": float((frame[m] - base[m]).abs().max()) for m in METRICS})
    row.update({f"{m}_images_changed": int((frame[m] != base[m]).sum()) for m in METRICS})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--data", default="protoshapes")
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("protobench-results/agreement"))
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                        help="the settings to run ('default' always runs first, as the base)")
    parser.add_argument("--smoke", action="store_true", help="2 images, 1 step, 'default' and '1 thread' only")
    args = parser.parse_args()
    if args.smoke:
        args.limit, args.steps, args.settings = 2, 1, ["default", "1 thread"]
    names = ["default", *[name for name in args.settings if name != "default"]]
    frames = {name: evaluate(name, SETTINGS[name], args) for name in names}
    base = frames["default"]
    report = {"images": len(base), "steps": args.steps,
              "default": {**base.attrs["setting"], **{f"{m}_mean": float(base[m].mean()) for m in METRICS},
                          "act_before_mean": float(base["act_before"].mean())},
              "against_default": {name: compare(frame, base) for name, frame in frames.items() if name != "default"}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
