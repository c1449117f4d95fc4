"""CUB-sized JPEG files on disk, and how fast they decode (the JPEG mode of attack_throughput.py).

`make_cub(root, n)` writes n synthetic JPEGs of CUB-like sizes (the longer side 500 px, the
other 280-500 px, as most CUB-200-2011 photos) in the official CUB_200_2011 layout:
images.txt, image_class_labels.txt, train_test_split.txt (all test images), bounding_boxes.txt,
classes.txt and images/<class>/<file>.jpg; no download. The pictures are smooth random
colour fields with noise, so the files are about the size of real photos (tens of kB) and
decode at a realistic speed; their content is meaningless (timing only).

Two ways to decode, timed separately from the attack:
  workers  protobench's own path: the CUB layout reader (protobench.layouts.cub) -> ImageList
           (PIL decode, crop to the box, resize, normalize) in DataLoader processes with
           pinned memory when a GPU is there;
  cuda     torchvision.io.decode_jpeg(device="cuda") on batches of file bytes read by
           DataLoader processes, then crop, resize and normalize on the GPU (only with CUDA).

As a script it writes the files (kept if DIR already holds n) and prints JSON with the seconds
that took and each decoder's images/s at 224 px (`--write-only`: no decoding); `--smoke`
writes 4 files (into DIR, or a temporary directory): it checks that the script runs, and its
figures mean nothing:
  python benchmarks/cub_jpeg.py /tmp/protobench-cub [--n 5794] [--workers 8] [--device cuda] [--write-only]
  python benchmarks/cub_jpeg.py --smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

CUB_TEST_IMAGES = 5794  # the test split of CUB-200-2011
CLASSES = 200


def _one_image(args: tuple[int, str, int]) -> tuple[int, int, int]:
    """Write image `i` to `path`; returns (i, width, height)."""
    from PIL import Image

    i, path, seed = args
    g = np.random.default_rng((seed, i))
    long, short = 500, int(g.integers(280, 501))
    w, h = (long, short) if g.random() < 0.75 else (short, long)  # mostly landscape, as CUB
    field = g.uniform(0, 255, (h // 25 + 2, w // 25 + 2, 3)).astype(np.uint8)
    img = Image.fromarray(field).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(img, dtype=np.int16) + g.integers(-12, 13, (h, w, 3), dtype=np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return i, w, h


def make_cub(root: str | Path, n: int = CUB_TEST_IMAGES, seed: int = 0, processes: int | None = None) -> Path:
    """Write n test images in the CUB_200_2011 layout under `root` (kept if already there with n images)."""
    root = Path(root)
    if (root / "images.txt").is_file() and len((root / "images.txt").read_text().splitlines()) == n:
        return root
    classes = [f"{c:03d}.Synthetic_Bird_{c:03d}" for c in range(1, CLASSES + 1)]
    labels = [i % CLASSES for i in range(n)]
    names = [f"{classes[c]}/Synthetic_Bird_{c + 1:03d}_{i + 1:05d}.jpg" for i, c in enumerate(labels)]
    for name in classes:
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
    jobs = [(i, str(root / "images" / names[i]), seed) for i in range(n)]
    with ProcessPoolExecutor(processes) as pool:
        sizes = {i: (w, h) for i, w, h in pool.map(_one_image, jobs, chunksize=32)}
    g = np.random.default_rng(seed)
    boxes = []
    for i in range(n):  # a bird-sized box: 40-90% of each side, anywhere in the picture
        w, h = sizes[i]
        bw, bh = w * g.uniform(0.4, 0.9), h * g.uniform(0.4, 0.9)
        boxes.append((g.uniform(0, w - bw), g.uniform(0, h - bh), bw, bh))
    lines = {
        "images.txt": [f"{i + 1} {names[i]}" for i in range(n)],
        "image_class_labels.txt": [f"{i + 1} {labels[i] + 1}" for i in range(n)],
        "train_test_split.txt": [f"{i + 1} 0" for i in range(n)],
        "bounding_boxes.txt": [f"{i + 1} {x:.1f} {y:.1f} {bw:.1f} {bh:.1f}" for i, (x, y, bw, bh) in enumerate(boxes)],
        "classes.txt": [f"{c + 1} {name}" for c, name in enumerate(classes)],
    }
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    return root


def open_test_split(root: str | Path, info):
    """The test split through protobench's own CUB layout reader."""
    from protobench.layouts.cub import open_cub
    from protobench.data.images import MAX_IMAGE_PIXELS

    return open_cub(Path(root), "test", info.input_size, info.mean, info.std, MAX_IMAGE_PIXELS)


def time_workers(dataset, batch_size: int, workers: int, device: torch.device) -> dict:
    """Decode every image with protobench's loader settings (PIL in `workers` processes, pinned
    memory and a copy to the device when it is a GPU); images/s."""
    from protobench.data.imagelist import collate

    pin = device.type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                         pin_memory=pin, prefetch_factor=4 if workers else None)
    start = time.perf_counter()
    count = 0
    for x, _, _, _ in loader:
        x = x.to(device, non_blocking=True)
        count += len(x)
    if pin:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"decoder": "workers", "workers": workers, "pin_memory": pin, "images": count, "seconds": seconds,
            "images_per_s": count / seconds}


class _FileBytes(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from torchvision.io import read_file

        return read_file(self.paths[i]), i


def gpu_decode_batch(data: list[torch.Tensor], boxes, size: int, mean, std, device) -> torch.Tensor:
    """JPEG bytes -> (B, 3, size, size) normalized on the GPU: decode, crop to the box, resize, normalize."""
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    from protobench.data.images import normalize, pixel_box

    decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    out = []
    for img, box in zip(decoded, boxes):  # per image: every photo has its own size and box
        left, top, right, bottom = pixel_box(box, (img.shape[2], img.shape[1]))
        crop = img[None, :, top:bottom, left:right].float() / 255.0
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return normalize(torch.cat(out), mean, std)


def time_cuda_decode(dataset, batch_size: int, workers: int, device: torch.device) -> dict:
    """Decode every image with nvJPEG (file bytes read in `workers` processes); images/s."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return {"decoder": "cuda", "available": False, "why": "no CUDA device: decode_jpeg(device='cuda') needs one"}
    loader = torch.utils.data.DataLoader(_FileBytes(dataset.paths), batch_size=batch_size, num_workers=workers,
                                         collate_fn=lambda items: items, prefetch_factor=4 if workers else None)
    size, mean, std = dataset.size, dataset.mean, dataset.std
    start = time.perf_counter()
    count = 0
    for items in loader:
        x = gpu_decode_batch([b for b, _ in items], [dataset.boxes[i] for _, i in items], size, mean, std, device)
        count += len(x)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"decoder": "cuda", "available": True, "workers": workers, "images": count, "seconds": seconds,
            "images_per_s": count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", help="where the CUB_200_2011 layout is written (kept if it holds --n)")
    parser.add_argument("--n", type=int, default=CUB_TEST_IMAGES, help="test images to write (default 5794)")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--write-only", action="store_true", help="write the files, time no decoding")
    parser.add_argument("--smoke", action="store_true",
                        help="4 files (in DIR, or a temporary directory), batch 2: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.batch_size = 4, 2
    elif args.dir is None:
        parser.error("give the directory to write the files to (or --smoke)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        start = time.perf_counter()
        make_cub(root, args.n)
        written = time.perf_counter() - start
        if args.write_only:
            print(json.dumps({"dir": str(root), "images": args.n, "write_s": written}))
            return
        info = type("Info", (), {"input_size": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
        data = open_test_split(root, info)
        device = torch.device(args.device)
        print(json.dumps({"dir": str(root), "images": len(data), "write_s": written, "decode": [
            time_workers(data, args.batch_size, args.workers, device),
            time_cuda_decode(data, args.batch_size, args.workers, device)]}, indent=2))


if __name__ == "__main__":
    main()
