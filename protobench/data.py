"""Datasets for the benchmark: every item is (image (3, S, S) normalized, label, index).

An image protobench cannot use (it does not decode, is over the pixel limit, or its box
misses it) comes back as None and the loader drops it (the caller counts it and asks
`why_skipped` for the reason), so one bad file never ends a run. Dataset layouts (CUB,
Cars, ImageFolder) are read in protobench.datasets; all of them end up as an ImageList.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from protobench.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Default of --max-image-pixels, checked from the header before decoding: 50 MP decodes to
# 150 MB of RGB (400 MB for 16-bit greyscale on its way to RGB) per decoding process.
MAX_IMAGE_PIXELS = 50_000_000

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels, 0-based, right/bottom exclusive


class Unusable(Exception):
    """An image the benchmark skips; the message says why, as a clause ("the image does not decode ...")."""


def load_image(path: str | os.PathLike, size: int, mean: Sequence[float], std: Sequence[float],
               box: Box | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Decode, follow the EXIF orientation, crop to `box`, convert to RGB whatever the mode,
    squash to size x size (bilinear), normalize. Unusable (never another error) for a bad image."""
    x = torch.from_numpy(decode(path, size, box, max_pixels)).permute(2, 0, 1)
    return normalize(x, mean, std)


def decode(path: str | os.PathLike, size: int, box: Box | None, max_pixels: int) -> np.ndarray:
    """(size, size, 3) float32 in 0..1; every way a file can fail becomes Unusable with a reason."""
    with _as_unusable(max_pixels), opened(path, max_pixels) as img, _pil_limit(max_pixels):
        ImageOps.exif_transpose(img, in_place=True)  # decodes; PIL's own checks now use our limit
        check_pixels(img.size, max_pixels)  # some formats (ICO, ICNS) pick their size on load
        if box is not None:
            img = img.crop(pixel_box(box, img.size))
        img = to_rgb(img).resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.float32) / 255.0


def probe(path: str | os.PathLike, max_pixels: int) -> None:
    """Unusable for what the header alone shows (not a file, not an image, no pixels, too large)."""
    with _as_unusable(max_pixels), opened(path, max_pixels):
        pass


def opened(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """The image at `path`, its header read and its size checked, its pixels not yet decoded."""
    check_file(path)
    with _pil_limit(None):  # the header only: check_pixels names the size and the option
        img = Image.open(path)
    try:
        check_pixels(img.size, max_pixels)
    except Unusable:
        img.close()
        raise
    return img


@contextmanager
def _as_unusable(max_pixels: int) -> Iterator[None]:
    """Every error reading an image as Unusable, with a reason."""
    try:
        yield
    except Unusable:
        raise
    except FileNotFoundError:
        raise Unusable("the file does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise Unusable(f"the image is over --max-image-pixels {max_pixels} ({one_line(err)})") from None
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, struct.error, ValueError,
        # EOFError, IndexError, ... on corrupt data (Pillow's own fuzz tests list them): all mean "does not decode"
        raise Unusable(f"the image does not decode ({type(err).__name__}: {one_line(err)})") from None


def check_file(path: str | os.PathLike) -> None:
    """Unusable for a directory, FIFO or device: opening a FIFO would wait forever."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise Unusable("it is a directory, not an image file")
    if not stat.S_ISREG(mode):
        raise Unusable("it is not a regular file (a pipe or device?)")


@contextmanager
def _pil_limit(max_pixels: int | None) -> Iterator[None]:
    """PIL's decompression-bomb check at `max_pixels` (0 or None: off), its warning an error;
    PIL's other warnings (e.g. "Corrupt EXIF data") silenced: whether the pixels decode decides.

    A process-wide setting, set per call: decoding runs in one thread per process."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels or None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_pixels(image_size: tuple[int, int], max_pixels: int) -> None:
    """Unusable for an empty image or one over `max_pixels` (0: no limit)."""
    width, height = image_size
    if width <= 0 or height <= 0:
        raise Unusable(f"the image has no pixels ({width} x {height})")
    if max_pixels and width * height > max_pixels:
        raise Unusable(f"the image is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels), over "
                       f"--max-image-pixels {max_pixels}: raise the limit to use it (0: no limit)")


def one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or "no message"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB whatever the mode; 16-bit greyscale is scaled to 8 bits (PIL's own conversion clips it at 255)."""
    if img.mode in ("I", "I;16", "I;16L", "I;16B"):
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        img = Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def pixel_box(box: Box, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The whole pixels that a (possibly fractional) box touches, clamped to the image.

    Unusable when the box misses the image altogether (clamping would crop an arbitrary edge pixel)."""
    width, height = image_size
    if box[0] >= width or box[1] >= height or box[2] <= 0 or box[3] <= 0:
        raise Unusable(f"the box (left, top, right, bottom) = ({', '.join(f'{v:g}' for v in box)}) lies outside "
                       f"the {width} x {height} image")
    left = max(math.floor(box[0]), 0)
    top = max(math.floor(box[1]), 0)
    right = max(min(math.ceil(box[2]), width), left + 1)
    bottom = max(min(math.ceil(box[3]), height), top + 1)
    return left, top, right, bottom


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(..., 3, H, W) pixels in 0..1 -> the model's normalized space."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - m) / s


class ImageList(torch.utils.data.Dataset):
    """Images with labels (0-based) and optional crop boxes: what every dataset layout becomes.

    `files` lists every file the dataset depends on (images and annotations), for its fingerprint.
    """

    def __init__(self, root: str | os.PathLike, paths: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                 size: int, mean: Sequence[float], std: Sequence[float], boxes: Sequence[Box] | None = None,
                 annotations: Sequence[str] = (), kind: str = "images", split: str | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS):
        self.root, self.kind, self.split = Path(root), kind, split
        self.paths, self.labels, self.classes = list(paths), list(labels), list(classes)
        self.boxes = list(boxes) if boxes is not None else None
        self.files = [*self.paths, *annotations]
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.max_pixels = check_max_pixels(max_pixels)
        for path in self.paths:
            check_utf8(path)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int]:
        try:
            x = self.load(index)
        except Unusable:
            x = None  # dropped by collate(); the runner records it as skipped and asks why_skipped
        return x, self.labels[index], index

    def load(self, index: int) -> torch.Tensor:
        box = self.boxes[index] if self.boxes is not None else None
        return load_image(self.paths[index], self.size, self.mean, self.std, box, self.max_pixels)

    def probe(self, index: int) -> None:
        """Unusable if image `index`'s header already shows it cannot be used (no decoding)."""
        probe(self.paths[index], self.max_pixels)

    def why_skipped(self, index: int) -> str:
        """Why image `index` is unusable, found again (cheap: header checks come first); the
        reason is not carried from the decoding processes."""
        try:
            self.load(index)
        except Unusable as err:
            return str(err)
        return "the image did not decode, but did when read again (a file changing under the run?)"


class ImageFolder(ImageList):
    """DIR/<class>/<image>: classes are the sorted folder names, as torchvision's ImageFolder."""

    def __init__(self, root: str | os.PathLike, size: int, mean: Sequence[float], std: Sequence[float],
                 max_pixels: int = MAX_IMAGE_PIXELS):
        root = Path(root)
        if not root.exists():
            raise DataError(f"data directory not found: {root}")
        if not root.is_dir():
            raise DataError(f"--data must be a directory of class folders, got a file: {root}")
        try:
            classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
            if not classes:
                raise DataError(f"no class folders in {root}: expected {root}/<class>/<image> (ImageFolder layout)")
            paths, labels = _image_files(root, classes)
        except OSError as err:  # a folder that cannot be listed
            raise DataError(f"cannot list {err.filename or root}: {err.strerror or err}") from None
        if not paths:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) under the class folders of {root}")
        super().__init__(root, paths, labels, classes, size, mean, std, kind="imagefolder", max_pixels=max_pixels)


def _image_files(root: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """Every file with an image extension under each class folder (recursively, sorted), and its label."""
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMG_EXTENSIONS and path.is_file():
                paths.append(str(path))
                labels.append(label)
    return paths, labels


def check_max_pixels(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"--max-image-pixels must be 0 (no limit) or a positive number of pixels, got {value!r}")
    return value


def check_utf8(path: str) -> None:
    """A DataError for a file name that is not UTF-8 (Python holds its bytes as surrogates):
    the result files are UTF-8, and writing the name there would fail at the end of the run."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"the file name {os.fsencode(path)!r} is not UTF-8: rename it (e.g. with convmv) "
                        "so that results can name it") from None


def skip_reason(dataset, index: int) -> str:
    """`path: reason` for an item the loader dropped, for warnings and --strict errors."""
    why = getattr(dataset, "why_skipped", None)
    return f"{dataset.paths[index]}: {why(index) if why else 'the image does not decode'}"


class Subset(torch.utils.data.Dataset):
    """Some items of a dataset, which keep their original index (and so their random draws)."""

    def __init__(self, dataset: torch.utils.data.Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def random_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """A fixed-seed random choice of `limit` of n indices, in ascending order (all when limit is None)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=limit, replace=False))


def collate(items: list[tuple[torch.Tensor | None, int, int]]):
    """Stack the decodable items; return (x, y, index, indices of undecodable items)."""
    good = [it for it in items if it[0] is not None]
    skipped = [it[2] for it in items if it[0] is None]
    if not good:
        return None, None, None, skipped
    x = torch.stack([it[0] for it in good])
    y = torch.tensor([it[1] for it in good])
    idx = torch.tensor([it[2] for it in good])
    return x, y, idx, skipped
