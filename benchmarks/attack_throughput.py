"""How fast is protobench's attack, against the model's own speed and the reference's structure?

Measures, in one run, on the same model, batch size, device and precision:
  (a) protobench   benchmark.run with pgd (regions, attack, metrics, records), in image-steps/s;
  (b) ideal        a bare loop of forward + input-gradient passes at the same batch size;
  (c) reference    the reference implementation's structure: one image at a time, the
                   protected box computed per image on the CPU with numpy, then pgd at batch 1.
and prints JSON with efficiency = a / b and speedup = a / c. On a CPU it also prints the machine
(model, vector extensions, threads), the load average at the start and the end, and each part's
CPU seconds (this process's), with efficiency_cpu_s = CPU seconds of (b) / those of (a): other
work on a shared machine disturbs CPU seconds far less than wall time.

Images are synthetic (a pool of random images in memory), so the figures are compute, not
JPEG decoding; `--jpeg DIR` instead reads JPEG files from a CUB-layout directory (written
there first if missing: --n images of CUB-like sizes, see cub_jpeg.py) and reports their
decoding (protobench's DataLoader processes, and nvJPEG on the GPU) apart from the attack.
`--compile-mode` compiles the forward and its input gradient (torch.compile: default,
max-autotune or reduce-overhead), every call padded to the batch shape. `--smoke` shrinks
every size (the smallest network, 32 px, 4 images, 2 steps, batch 4, one round; with --jpeg,
4 files) and keeps the modes (compiling with the aot_eager backend: no kernels generated): it
checks that the script runs end to end, and its figures mean nothing.
Examples:
  python benchmarks/attack_throughput.py --model demo --device cpu
  python benchmarks/attack_throughput.py --smoke --device cpu
  python benchmarks/attack_throughput.py --model resnet34 --device cuda --precision bf16 --batch-size 128
  python benchmarks/attack_throughput.py --model resnet34 --device cuda --precision bf16 --jpeg /tmp/cub
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from protobench.attacks.pgd import pgd
from protobench.core.attack import image_bounds
from protobench.core import rng
from protobench.core.precision import machine
from protobench.adapters.protopnet import ProtoPNetAdapter, ProtoPNetConfig
from protobench.core.protocol import EvalProtocol
from protobench.run.benchmark import attack_objective, run
from protobench.run.context import RunContext
from protobench.run.forward import Runtime, frozen_eval, model_forward


class SyntheticImages(torch.utils.data.Dataset):
    """`n` items cycling over a pool of random normalized images; labels cycle over the classes."""

    def __init__(self, n: int, size: int, classes: int, pool: int = 64):
        self.n, self.classes = n, classes
        self.pool = rng.uniform(0, torch.arange(pool), (3, size, size), -2.0, 2.0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.pool[i % len(self.pool)], i % self.classes, i


def build_model(name: str, ckpt: str | None) -> ProtoPNetAdapter:
    if ckpt:
        from protobench.models.lookup import get_adapter

        return get_adapter("protopnet").load(ckpt)
    if name == "demo":
        from protobench.demo import demo_checkpoint  # the model shipped with the package

        return ProtoPNetAdapter.load(str(demo_checkpoint()))
    if name == "resnet34":  # the paper's CUB setting, random weights (timing only)
        cfg = ProtoPNetConfig(backbone="resnet34", num_classes=200, num_prototypes=2000, prototype_dim=128)
    elif name == "tiny":
        cfg = ProtoPNetConfig(backbone="tinycnn", backbone_kwargs={"channels": [32, 64, 128], "convs": 2},
                              num_classes=6, num_prototypes=12, prototype_dim=32, img_size=64)
    elif name == "smoke":  # the smallest network that runs every part (--smoke)
        cfg = ProtoPNetConfig(backbone="tinycnn", backbone_kwargs={"channels": [4, 8, 8]}, num_classes=4,
                              num_prototypes=8, prototype_dim=8, img_size=32)
    else:
        raise SystemExit(f"unknown --model {name!r}: demo, tiny, smoke or resnet34")
    return ProtoPNetAdapter.from_config(cfg, seed=0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_protobench(adapter, data, protocol, batch_size, runtime, workers) -> float:
    paths = getattr(data, "paths", None) or [f"synthetic/{i}" for i in range(len(data))]
    start = time.perf_counter()
    context = RunContext(adapter.device, runtime, batch_size, workers)
    records, _ = run(adapter, data, paths, protocol, context)
    sync(adapter.device)
    assert len(records) == len(data)
    return time.perf_counter() - start


def ideal_step(objective, x: torch.Tensor) -> torch.Tensor:
    """One forward + input-gradient pass of the attack's objective, as each pgd step takes it."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(x).sum(), x)
    return grad


def time_ideal(adapter, data, steps, batch_size, runtime) -> float:
    """The attack's passes alone: per batch, `steps` forward + input-gradient passes of the
    attack's own objective (benchmark.attack_objective, through the same model_forward: the same
    precision, chunks, memory format and compilation, and the same Evidence field, `act`), one
    prototype per image; no regions, projection, metrics or records."""
    forward = model_forward(adapter, runtime)
    pad = bool(runtime.compile) and runtime.chunk is None  # as benchmark.run: a compiled model sees one shape
    batches = []
    for i in range(0, len(data), batch_size):
        rows = list(range(i, min(i + batch_size, len(data))))
        rows += rows[-1:] * (batch_size - len(rows)) if pad else []
        batches.append(torch.stack([data[j][0] for j in rows]))
    num = adapter.info.num_prototypes
    sync(adapter.device)
    start = time.perf_counter()
    with frozen_eval(adapter.model):
        for x in batches:
            x = x.to(adapter.device, non_blocking=True)
            weights = F.one_hot(torch.arange(len(x), device=x.device) % num, num).float()  # (B, P)
            objective = attack_objective(forward, weights)
            for _ in range(steps):
                ideal_step(objective, x)
    sync(adapter.device)
    return time.perf_counter() - start


def reference_box_mask(act_map: np.ndarray, size: int, margin: int) -> np.ndarray:
    """The reference's per-image box: upsample on the CPU, numpy percentile, row/column scans."""
    up = F.interpolate(torch.from_numpy(act_map)[None, None], size=(size, size), mode="bicubic")[0, 0].numpy()
    hot = up >= np.percentile(up, 95)
    rows = [r for r in range(size) if hot[r].max()]
    cols = [c for c in range(size) if hot[:, c].max()]
    mask = np.ones((1, 1, size, size), dtype=np.float32)
    mask[..., max(rows[0] - margin, 0):min(rows[-1] + 1 + margin, size - 1),
         max(cols[0] - margin, 0):min(cols[-1] + 1 + margin, size - 1)] = 0
    return mask


def time_reference(adapter, data, protocol, n_images, runtime) -> float:
    """One image at a time, as the reference does (its attack made real: gradient steps). Every
    model call is one image: the CPU's fixed chunks (Runtime.chunk) would pad it to several."""
    size = adapter.info.input_size
    margin = protocol.resolved(size)["margin"]
    forward = model_forward(adapter, replace(runtime, chunk=None))
    bounds = image_bounds(adapter.info.mean, adapter.info.std, adapter.device)
    sync(adapter.device)
    start = time.perf_counter()
    with frozen_eval(adapter.model):
        for i in range(n_images):
            x = data[i][0][None].to(adapter.device)
            with torch.no_grad():
                maps = forward(x).maps.clamp(min=0).cpu().numpy()
            proto = int(maps.max(axis=(2, 3)).argmax())
            attackable = torch.from_numpy(reference_box_mask(maps[0, proto], size, margin)).to(adapter.device) > 0
            noise = rng.uniform(protocol.seed, torch.tensor([i], device=adapter.device), (3, size, size), -1, 1)
            weights = F.one_hot(torch.tensor([proto], device=x.device), adapter.info.num_prototypes).float()
            x_adv, _ = pgd(attack_objective(forward, weights), x, attackable, noise,
                                  eps=protocol.eps, step=protocol.step, steps=protocol.steps, bounds=bounds)
            with torch.no_grad():
                forward(x_adv)
    sync(adapter.device)
    return time.perf_counter() - start


def jpeg_mode(args, adapter, runtime, protocol, batch: int, device: torch.device) -> dict:
    """Decoding, then the attack from the files (protobench's loader), then the same attack on
    images in memory: the same images, the same run."""
    import os

    from cub_jpeg import CUB_TEST_IMAGES, make_cub, open_test_split, time_cuda_decode, time_workers

    gpu = device.type == "cuda"
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if gpu else 0)
    start = time.perf_counter()
    make_cub(args.jpeg, args.n or CUB_TEST_IMAGES)
    written = time.perf_counter() - start
    data = open_test_split(args.jpeg, adapter.info)
    n = len(data)
    time_protobench(adapter, SyntheticImages(min(batch, n), adapter.info.input_size, adapter.info.num_classes),
                    EvalProtocol.make(steps=2), batch, runtime, 0)  # warm-up (and compile)
    decode = [time_workers(data, batch, workers, device), time_cuda_decode(data, batch, workers, device)]
    from_jpeg = time_protobench(adapter, data, protocol, batch, runtime, workers)
    in_memory = None if "memory" in args.skip.split(",") else time_protobench(
        adapter, SyntheticImages(n, adapter.info.input_size, adapter.info.num_classes), protocol, batch, runtime, 0)
    return {
        "label": args.label, "mode": "jpeg", "model": args.ckpt or args.model, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if gpu else machine()["cpu"],
        "threads": torch.get_num_threads(), "precision": args.precision, "batch_size": batch,
        "channels_last": runtime.channels_last, "compile": runtime.compile, "chunk": runtime.chunk,
        "images": n, "steps": args.steps, "workers": workers, "jpeg_dir": str(args.jpeg), "write_s": written,
        "decode": decode, "from_jpeg_wall_s": from_jpeg, "in_memory_wall_s": in_memory,
        "from_jpeg_img_steps_per_s": n * args.steps / from_jpeg, "torch": torch.__version__,
    }


def smoke_compile(compile_fn):
    """torch.compile with the aot_eager backend, whatever the mode: Dynamo and AOTAutograd capture
    the forward and its backward as in a real run, but no kernels are generated (code generation
    for a CPU takes minutes). --compile-mode's own code generation is what a full run times."""

    def compile_smoke(fn, mode=None, **kwargs):
        return compile_fn(fn, backend="aot_eager", **kwargs)

    return compile_smoke


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="demo, tiny, smoke or resnet34 (random weights)")
    parser.add_argument("--ckpt", default=None, help="a protopnet checkpoint instead of --model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 128 on GPU")
    parser.add_argument("--images", type=int, default=None, help="images for (a) and (b); default 64 CPU, 1024 GPU")
    parser.add_argument("--reference-images", type=int, default=None, help="images for (c); default 8 CPU, 64 GPU")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: 0 in memory; with --jpeg, as protobench evaluate: 0 on a CPU, 8 on a GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile, mode default")
    parser.add_argument("--compile-mode", default=None, choices=["default", "max-autotune", "reduce-overhead"])
    parser.add_argument("--jpeg", default=None, metavar="DIR",
                        help="attack JPEG files in the CUB layout at DIR (written there first if missing)")
    parser.add_argument("--n", type=int, default=None, help="with --jpeg: test images to write and attack (default 5794)")
    parser.add_argument("--distance", default="float64", choices=["float64", "float32"],
                        help="float32: ProtoPNet's original float32 distance formula (the stable float64 one's cost)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: ideal,reference (--jpeg: memory)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of (a), (b), (c); fastest kept")
    parser.add_argument("--label", default=None, help="a name for this measurement, copied into the JSON")
    parser.add_argument("--oneline", action="store_true", help="print the JSON on one line (for .jsonl logs)")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest sizes, whatever the options above say: checks that it runs, times nothing")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.ckpt, args.images, args.reference_images, args.steps = "smoke", None, 4, 1, 2
        args.batch_size, args.repeat, args.n = 4, 1, 4
        torch.compile = smoke_compile(torch.compile)

    device = torch.device(args.device)
    batch = args.batch_size or (128 if device.type == "cuda" else 32)
    torch.manual_seed(0)
    adapter = build_model(args.model, args.ckpt).to(device)
    runtime = Runtime.for_device(device, precision=args.precision, compile=args.compile_mode or args.compile or None,
                                 channels_last=False if args.no_channels_last else None)
    protocol = EvalProtocol.make(steps=args.steps)
    from distance_cost import VARIANTS, distance_in_use

    with distance_in_use(VARIANTS[args.distance]):
        report = jpeg_mode(args, adapter, runtime, protocol, batch, device) if args.jpeg else \
            in_memory(args, adapter, runtime, protocol, batch, device)
    print(json.dumps({**report, "distance": args.distance}, indent=None if args.oneline else 2))


def in_memory(args, adapter, runtime, protocol, batch: int, device: torch.device) -> dict:
    """(a), (b) and (c) on synthetic images held in memory, in interleaved rounds."""
    gpu = device.type == "cuda"
    n = args.images or (1024 if gpu else 64)
    n_ref = args.reference_images or (64 if gpu else 8)
    workers = args.workers or 0
    data = SyntheticImages(n, adapter.info.input_size, adapter.info.num_classes)

    warm = SyntheticImages(min(batch, n), adapter.info.input_size, adapter.info.num_classes)
    time_protobench(adapter, warm, EvalProtocol.make(steps=2), batch, runtime, 0)  # warm-up (and compile)
    skip = set(args.skip.split(","))
    parts = {"a": lambda: time_protobench(adapter, data, protocol, batch, runtime, workers),
             "b": None if "ideal" in skip else lambda: time_ideal(adapter, data, args.steps, batch, runtime),
             "c": None if "reference" in skip else lambda: time_reference(adapter, data, protocol, n_ref, runtime)}
    runs: dict[str, list[float]] = {k: [] for k in parts}
    cpu_runs: dict[str, list[float]] = {k: [] for k in parts}  # this process's CPU seconds: load disturbs them less
    load_start = os.getloadavg()
    for _ in range(args.repeat):  # interleaved rounds; the fastest of each is the least disturbed
        for key, part in parts.items():
            if part is not None:
                cpu = time.process_time()
                runs[key].append(part())
                cpu_runs[key].append(time.process_time() - cpu)
    t_a, t_b, t_c = (min(runs[k]) if runs[k] else None for k in "abc")
    rate = lambda images, t: images * args.steps / t if t else None  # noqa: E731 image-steps per second
    a, b, c = rate(n, t_a), rate(n, t_b), rate(n_ref, t_c)
    cpu_a, cpu_b = (min(cpu_runs[k]) if cpu_runs[k] else None for k in "ab")
    host = {} if gpu else {"machine": machine(), "load_average": [load_start, os.getloadavg()],
                           "rounds_cpu_s": cpu_runs, "efficiency_cpu_s": cpu_b / cpu_a if cpu_b else None}
    return {
        "label": args.label, "model": args.ckpt or args.model, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if gpu else machine()["cpu"],
        "threads": torch.get_num_threads(), "precision": args.precision, "batch_size": batch,
        "channels_last": runtime.channels_last, "compile": runtime.compile, "chunk": runtime.chunk,
        "images": n, "reference_images": n_ref, "steps": args.steps,
        "protobench_img_steps_per_s": a, "ideal_img_steps_per_s": b, "reference_img_steps_per_s": c,
        "protobench_wall_s": t_a, "rounds_s": runs, "efficiency": a / b if b else None, "speedup": a / c if c else None,
        **host, "torch": torch.__version__,
    }


if __name__ == "__main__":
    main()
