"""One image file -> the tensor the model sees, or Unusable with the reason it cannot be used.

Decoding is where untrusted bytes meet PIL: the size is checked from the header before any
pixel is decoded (--max-image-pixels), whatever PIL raises on a damaged file becomes Unusable,
and a file that is not a regular file is never opened. protobench.data.imagelist builds datasets on this.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from protobench.data.layouts import MAX_IMAGE_PIXELS

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


def displayed_size(path: str | os.PathLike, max_pixels: int) -> tuple[int, int]:
    """(width, height) of the image as displayed (its EXIF orientation applied), from its header
    alone; Unusable as `probe`."""
    with _as_unusable(max_pixels), opened(path, max_pixels) as img:
        width, height = img.size
        turned = img.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap the axes
        return (height, width) if turned else (width, height)


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
