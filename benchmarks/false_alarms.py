"""How often does `protobench compare` call a model worse than itself? The demo model evaluated on the
same images with attack seeds 0..N (N + 1 runs), and each seed compared with the next (N pairs) under
`--gate tolerance` and `--gate significant` (default tolerances); then the same model with its
prototypes perturbed by Gaussian noise of growing size, each compared with seed 0, to show what the
significant gate does fail.

The images are the first --images of the demo's test split, exported as PNG files so that every run
evaluates the same images whatever its seed (with --limit, the seed also picks the subset).

Prints one JSON object: per pair the failing metrics under each gate; the false-alarm counts; per
perturbation the PAC and PLC deltas with their paired intervals and both gates' verdicts. Each pair
also goes to stderr as it is compared.

  python benchmarks/false_alarms.py [--images 20] [--pairs 20] [--noise 0.05,0.1,0.2]
                                     [--out protobench-results/false-alarms]
  python benchmarks/false_alarms.py --smoke   # 2 images, 1 pair, one perturbation, 2 steps
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from protobench.core.protocol import EvalProtocol
from protobench.run import compare as cmp
from protobench.run.evaluate import EvaluateConfig, evaluate, load_adapter

GATES = ("tolerance", "significant")


STEPS = [40]  # the attack's steps (--steps)


def run(ckpt: str, data: Path, out: Path, seed: int) -> Path:
    if not (out / "meta.json").is_file():
        protocol = EvalProtocol.make(seed=seed, steps=STEPS[0])
        evaluate(EvaluateConfig(ckpt=ckpt, data=str(data), out=str(out), protocol=protocol, overwrite=True,
                                device="cpu"))
    return out


def verdicts(base: Path, new: Path) -> dict:
    tol = cmp.parse_tolerances([])
    found = {}
    for gate in GATES:
        table, _ = cmp.compare(str(base), str(new), tol, gate=gate)
        found[gate] = table.loc[table["status"] == "FAIL", "metric"].tolist()
        found["rows"] = {r["metric"]: [round(r["delta"], 2), round(r["ci_low"], 2), round(r["ci_high"], 2)]
                         for r in table.to_dict("records") if r["metric"] in ("PAC", "PLC", "acc_after")}
    return found


def perturbed(ckpt: str, out: Path, scale: float) -> str:
    """The model with scale * std(prototypes) Gaussian noise added to its prototype vectors (seeded)."""
    adapter = load_adapter("auto", ckpt, {}, "cpu")
    protos = adapter.model.prototype_vectors
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        protos += scale * float(protos.std()) * torch.randn(protos.shape, generator=g)
    path = out / f"perturbed-{scale}.safetensors"
    adapter.save(str(path))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--noise", default="0.05,0.1,0.2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("protobench-results/false-alarms"))
    parser.add_argument("--smoke", action="store_true", help="the smallest sizes: 2 images, 1 pair, 2 steps")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.pairs, args.noise, args.steps = 2, 1, "0.1", 2
    STEPS[0] = args.steps
    from protobench.demo import demo_checkpoint
    from protobench.demo.shapes import export

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    if not data.exists():
        export(data, "test", args.images)
    ckpt = demo_checkpoint()
    runs = [run(ckpt, data, args.out / f"seed-{s}", s) for s in range(args.pairs + 1)]
    alarms = {gate: 0 for gate in GATES}
    pairs, perturbations = [], []
    for s in range(args.pairs):
        found = verdicts(runs[s], runs[s + 1])
        alarms = {gate: alarms[gate] + bool(found[gate]) for gate in GATES}
        pairs.append({"pair": [s, s + 1], **found})
        print(json.dumps(pairs[-1]), file=sys.stderr, flush=True)
    for scale in [float(x) for x in args.noise.split(",") if x]:
        model = perturbed(ckpt, args.out, scale)
        other = run(model, data, args.out / f"perturbed-{scale}", 1)
        perturbations.append({"prototype_noise": scale, "demo_vs_perturbed": verdicts(runs[0], other),
                              "perturbed_vs_demo": verdicts(other, runs[0])})
    print(json.dumps({"images": args.images, "pairs": args.pairs, "steps": args.steps, "false_alarms": alarms,
                      "pair_results": pairs, "perturbations": perturbations}, indent=1))


if __name__ == "__main__":
    main()
