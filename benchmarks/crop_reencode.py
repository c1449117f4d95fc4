"""What does re-encoding the cropped images as JPEG (quality 95) change? The reference's
crop_cub_data.py writes every cropped CUB image with cv2.imwrite (JPEG, quality 95) and evaluates
those files; protobench crops in memory. Measured here with Pillow's libjpeg at quality 95 (4:2:0,
as OpenCV's default), on two sets of pictures:

  demo  the 150 ProtoShapes test images, lossless against re-encoded: pixel change (0-255), how many
        of the demo model's own-class prototype peaks (the scorecard's boxes' centres) move, and the
        scorecard itself (consistency, stability: `protobench evaluate --metrics
        consistency,stability`, seed 0) on both;
  cub   --cub-images synthetic CUB-layout photos (benchmarks/cub_jpeg.py: smooth colour fields with
        noise, tens of kB each), cropped to their boxes in memory against crop + re-encode: the
        pixel change only (their content is meaningless to a model).

    python benchmarks/crop_reencode.py [--cub-images 200] [--work DIR]     prints JSON

`--smoke`: 6 demo images, 2 CUB photos (checks that it runs; measures nothing).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from protobench.core.precision import machine


def reencode(pixels: np.ndarray, quality: int = 95) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def pixel_change(pairs) -> dict:
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in pairs]
    return {"mean_abs_255": float(np.mean([d.mean() for d in diffs])), "max_abs_255": int(max(d.max() for d in diffs))}


def write_folder(root: Path, dataset, pixels, suffix: str) -> Path:
    """ImageFolder <class>/<index><suffix> and its parts.csv (the demo's own keypoints)."""
    from protobench.demo.shapes import PARTS, part_keypoints

    rows = [["image", "part", "x", "y", "visible"]]
    for i, image in enumerate(pixels):
        name = f"{dataset.classes[dataset.labels[i]]}/{i:05d}{suffix}"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / name, **({"format": "PNG"} if suffix == ".png" else {"quality": 95}))
        xy, visible = part_keypoints(dataset.design, dataset.split, i)
        rows += [[name, part, *(xy[k] if visible[k] else ("", "")), int(visible[k])] for k, part in enumerate(PARTS)]
    with (root / "parts.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def own_class_peaks(adapter, images: np.ndarray, labels) -> torch.Tensor:
    from protobench.core.parts import peaks
    from protobench.data.images import normalize

    x = normalize(torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2), adapter.info.mean,
                  adapter.info.std)
    with torch.no_grad():
        maps = adapter(x)[0]
    own = adapter.prototype_class_identity[:, torch.tensor(labels)].t() > 0  # (B, P)
    rows, cols = peaks(maps[own], adapter.info.input_size)
    return torch.stack([rows, cols], dim=1)


def scorecard(ckpt: str, data: Path, out: Path) -> dict:
    from protobench.run.evaluate import EvaluateConfig, evaluate

    summary = evaluate(EvaluateConfig(ckpt=ckpt, data=str(data), out=str(out), metrics=("consistency", "stability"),
                                      overwrite=True))["summary"]
    return {k: v for k, v in summary.items() if k.startswith(("consistency", "stability"))}


def demo(work: Path, n: int | None = None) -> dict:
    from protobench.demo import demo_checkpoint
    from protobench.demo.shapes import ProtoShapes
    from protobench.models.lookup import get_adapter

    dataset = ProtoShapes("test", n=n)
    lossless = np.stack([dataset.pixels(i) for i in range(len(dataset))])
    jpeg = np.stack([reencode(p) for p in lossless])
    adapter = get_adapter("auto").load(demo_checkpoint())
    before, after = own_class_peaks(adapter, lossless, dataset.labels), own_class_peaks(adapter, jpeg, dataset.labels)
    png_dir = write_folder(work / "demo_png", dataset, lossless, ".png")
    jpg_dir = write_folder(work / "demo_jpg", dataset, lossless, ".jpg")  # saved at quality 95: decodes to `jpeg`
    return {"images": len(dataset), "pixels": pixel_change(zip(lossless, jpeg)),
            "own_class_peaks": len(before), "peaks_moved": int((before != after).any(dim=1).sum()),
            "scorecard_lossless": scorecard(demo_checkpoint(), png_dir, work / "out_png"),
            "scorecard_jpeg_95": scorecard(demo_checkpoint(), jpg_dir, work / "out_jpg")}


def cub(work: Path, n: int) -> dict:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from cub_jpeg import make_cub  # a module by name, so its worker processes can import it too

    root = make_cub(work / "cub", n)
    names = dict(line.split() for line in (root / "images.txt").read_text().splitlines())
    boxes = {r.split()[0]: [int(float(v)) for v in r.split()[1:]] for r in (root / "bounding_boxes.txt").read_text().splitlines()}
    pairs = []
    for image_id, name in names.items():
        x, y, w, h = boxes[image_id]
        crop = np.asarray(Image.open(root / "images" / name).convert("RGB"))[y:y + h, x:x + w]
        pairs.append((crop, reencode(crop)))
    return {"images": n, "pixels": pixel_change(pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cub-images", type=int, default=200)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="6 demo images, 2 CUB photos: checks that it runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        found = {"demo": demo(work, 6 if args.smoke else None), "cub": cub(work, 2 if args.smoke else args.cub_images)}
        print(json.dumps({"machine": machine(), **found}, indent=1))


if __name__ == "__main__":
    main()
