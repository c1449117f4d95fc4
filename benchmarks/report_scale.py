"""How large and how slow is `protobench report` on a CUB-sized comparison?

Builds synthetic result directories shaped like CUB-200-2011 runs of a ProtoPNet (5,794 test images,
200 classes, 2,000 prototypes, 224 px images, 7 x 7 maps), one per model, each with an
examples.safetensors as `evaluate --save-examples` writes it, then times `build_report` on them with
`--examples saved` (what remains once the drawn images are re-run: reading, tables, charts, strips,
page). The prototypes' source patches (which need a checkpoint and training data) are stood in for by
synthetic 224 px images of the same kind, so the gallery's cards and the strips' source panels are drawn
and counted too. It prints JSON: wall and CPU seconds (CPU time is what a busy machine does not inflate),
report.html's size, the files written.

The images are smooth random fields (like photographs, they compress) and the perturbation is +-eps
sign noise outside the protected box (like pgd's, it does not).

    python benchmarks/report_scale.py                      # 2 models, --worst 3 --best 1
    python benchmarks/report_scale.py --models 4 --worst 5 --best 2
    python benchmarks/report_scale.py --smoke            # 2 models of 400 images: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

IMAGES, CLASSES, PROTOTYPES, SIZE, MAP = 5794, 200, 2000, 224, 7
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def per_image(seed: int, images: int = IMAGES) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = np.arange(images) % CLASSES
    proto = np.where(rng.random(images) < 0.8, label * 10 + rng.integers(0, 10, images), rng.integers(0, PROTOTYPES, images))
    act = rng.uniform(2, 9, images)
    pac = np.clip(rng.normal(25 + 10 * seed, 20, images), -30, 100)
    return pd.DataFrame({
        "index": np.arange(images), "path": [f"/data/CUB_200_2011/images/{c:03d}.Bird/img_{i:05d}.jpg"
                                             for i, c in zip(range(images), label)],
        "label": label, "pred_before": label, "pred_after": np.where(rng.random(images) < 0.3, (label + 1) % CLASSES, label),
        "proto": proto, "proto_class": proto // 10, "act_before": act, "act_after": act * (1 - pac / 100),
        "PAC": pac, "PRC": rng.poisson(3, images), "PLC": rng.uniform(0, 100, images),
        "zero_grad": False, "zero_grad_steps": 0, "protected_frac": rng.uniform(0.1, 0.4, images)})


def write_run(out: Path, name: str, seed: int, images: int = IMAGES) -> None:
    from protobench.report.examples import FILE, save_tensors
    from protobench.report.tables import picks
    from protobench.run.results import summarize

    out.mkdir(parents=True)
    table = per_image(seed, images)
    table.to_csv(out / "per_image.csv", index=False)
    pd.DataFrame([summarize(table, name)]).to_csv(out / "summary.csv", index=False)
    meta = {"model": name, "adapter": "protopnet", "checkpoint": f"/models/{name}.pth",
            "checkpoint_sha256": f"{seed:064x}", "dataset": "/data/CUB_200_2011", "dataset_kind": "cub",
            "split": "test", "dataset_fingerprint": {"sha256": "ab" * 32, "files": images + 2, "bytes": 10**9},
            "dataset_images": images, "limit": None, "device_type": "cuda", "device": "cuda", "precision": "fp32",
            "protocol": {"name": "default", "attack": "pgd", "select": "top-proto", "eps": 0.4, "step": 0.01,
                         "steps": 40, "clip": True, "margin": 10, "seed": 0}, "seed": 0}
    (out / "meta.json").write_text(json.dumps(meta))
    indices = sorted({p.index for p in picks(table, 10, 10)})
    save_tensors(out / FILE, meta, synthetic_tensors(indices, seed), MEAN, STD, [f"{c:03d}.Bird" for c in range(CLASSES)])


def synthetic_tensors(indices: list[int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = len(indices)
    coarse = torch.rand(n, 3, 14, 14, generator=g) * 4 - 2
    images = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    attackable = torch.ones(n, 1, SIZE, SIZE, dtype=torch.bool)
    attackable[:, :, 60:140, 70:160] = False
    sign = torch.randint(0, 2, (n, 3, SIZE, SIZE), generator=g).float() * 0.8 - 0.4
    maps = torch.rand(n, MAP, MAP, generator=g) * 5
    return {"index": torch.tensor(indices), "images": images, "images_adv": images + sign * attackable,
            "attackable": attackable, "map_star": maps, "map_star_adv": maps.roll(2, dims=2) * 0.6}


def synthetic_sources(run, options, protos, adapter=None, log=None):
    """Stands in for report.gallery.prototype_side: one smooth synthetic source image per prototype."""
    from protobench.report.gallery import Patch
    from protobench.report.sources import Source
    from protobench.report.strips import pixels_of

    images = synthetic_tensors(list(protos), 7)["images"]
    return {p: Patch(p, pixels_of(images[k], MEAN, STD), (80, 120, 90, 130), f"training image {p}",
                     "the train split of /data/CUB_200_2011",
                     Source(p, p, f"images/{p}.jpg", p // 10, 24, 7.5, (80, 120, 90, 130), 1.0))
            for k, p in enumerate(protos)}, ""


def by_kind(files: list[Path]) -> dict[str, list[int]]:
    """PNG sizes by picture kind: strips (worst, median, best), prototype cards, the rest."""
    kinds: dict[str, list[int]] = {}
    for path in files:
        if path.suffix == ".png":
            kind = ("strip" if any(f"-{k}-" in path.name for k in ("worst", "median", "best")) else
                    "prototype card" if "-prototype-" in path.name else "chart")
            kinds.setdefault(kind, []).append(path.stat().st_size)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--worst", type=int, default=3)
    parser.add_argument("--best", type=int, default=1)
    parser.add_argument("--images", type=int, default=IMAGES, help="test images per run (default: CUB's 5,794)")
    parser.add_argument("--smoke", action="store_true",
                        help="2 models of 400 images, --worst 1 --best 1: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.images, args.worst, args.best = 2, 400, 1, 1
    from protobench.report import gallery
    from protobench.report.build import Options, build_report

    gallery.prototype_side = synthetic_sources

    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / f"model{m}" for m in range(args.models)]
        for m, d in enumerate(dirs):
            write_run(d, f"protopnet-{m}", m, args.images)
        started, cpu = time.perf_counter(), time.process_time()
        result = build_report([str(d) for d in dirs], Options(out=str(Path(tmp) / "report"), worst=args.worst,
                                                               best=args.best, examples="saved"))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        written = sorted(Path(result["out"]).iterdir())
        print(json.dumps({
            "models": args.models, "images": args.images, "prototypes": PROTOTYPES, "image_size": SIZE,
            "worst": args.worst, "best": args.best, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "report_html_mb": round(result["bytes"] / 2**20, 2),
            "files_mb": round(sum(p.stat().st_size for p in written) / 2**20, 2), "files": len(written),
            "mean_png_mb": {kind: round(float(np.mean(sizes)) / 2**20, 3) for kind, sizes in by_kind(written).items()},
            "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
        }, indent=1))


if __name__ == "__main__":
    main()
