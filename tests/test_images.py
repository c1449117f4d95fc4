"""Images the benchmark cannot use: over the pixel limit, corrupt, not files, boxes off the image;
and the EXIF orientation of the ones it can."""

import io
import json
import os
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from datasets_fixtures import png_bytes
from protobench.data import images
from protobench.data.imagelist import MAX_IMAGE_PIXELS, ImageList, Unusable, load_image
from protobench.errors import DataError, DataWarning
from protobench.train.data import in_memory

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def image_list(tmp_path, files: dict[str, bytes], max_pixels: int = MAX_IMAGE_PIXELS, boxes=None) -> ImageList:
    paths = []
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        paths.append(str(tmp_path / name))
    return ImageList(tmp_path, paths, [0] * len(paths), ["a"], 8, MEAN, STD, boxes=boxes, max_pixels=max_pixels)


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def test_a_header_over_the_limit_is_refused_before_decoding(tmp_path):
    # the file: 13 300 x 13 300 16-bit greyscale; only two rows are stored, the header is what counts
    path = tmp_path / "huge.png"
    path.write_bytes(png_bytes(13300, 13300, rows=2))
    with pytest.raises(Unusable) as err:
        load_image(path, 8, MEAN, STD)
    # 13 300^2 = 176 890 000 pixels
    assert "13300 x 13300 pixels (176.9 megapixels), over --max-image-pixels 50000000" in str(err.value)


@pytest.mark.parametrize("size", [(0, 16), (16, 0)])
def test_an_image_without_pixels_is_unusable(size):
    # PIL's common plugins refuse such headers themselves; the check stands for the others
    with pytest.raises(Unusable, match=f"the image has no pixels \\({size[0]} x {size[1]}\\)"):
        images.check_pixels(size, 0)


def test_the_limit_is_the_users_not_pils(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    Image.new("RGB", (30, 20), (10, 20, 30)).save(path)  # 600 pixels
    with pytest.raises(Unusable, match="30 x 20 pixels"):
        load_image(path, 4, MEAN, STD, max_pixels=599)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's own limit, set lower elsewhere in the process
    for limit in (600, 0):  # at the limit; no limit
        x = load_image(path, 4, MEAN, STD, max_pixels=limit)
        assert torch.allclose(x[:, 0, 0], torch.tensor([10, 20, 30]) / 255)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored


def test_a_bomb_is_skipped_without_the_memory_it_would_take(tmp_path):
    """A 64 MP 16-bit PNG of zeros: 0.2 MB on disk, 128 MB of pixels once decoded (more as RGB
    floats). Skipping it must not raise the peak memory of a fresh process by a fraction of that."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(8000, 8000))
    assert path.stat().st_size < 1 << 20
    script = (
        "import json, resource, sys\n"
        "from protobench.data.imagelist import ImageList\n"
        "ds = ImageList(sys.argv[1], [sys.argv[2]], [0], ['a'], 8, (0, 0, 0), (1, 1, 1))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "x = ds[0][0]\n"
        "reason = ds.why_skipped(0)\n"
        "rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps({'skipped': x is None, 'rise_kib': rise, 'reason': reason}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(path)], capture_output=True, text=True,
                          timeout=300, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["skipped"] and "8000 x 8000 pixels (64.0 megapixels)" in result["reason"]
    assert result["rise_kib"] < 32 << 10  # under 32 MiB: a decode would need 128 MiB for the 16-bit pixels alone


@pytest.mark.parametrize("raise_it", [
    lambda: (_ for _ in ()).throw(Image.DecompressionBombError("Image size (9 pixels) exceeds limit")),
    lambda: warnings.warn("Image size (9 pixels) exceeds limit", Image.DecompressionBombWarning),
])
def test_pils_own_bomb_checks_end_as_unusable(tmp_path, monkeypatch, raise_it):
    """PIL checks sizes again while it decodes (GIF frames, TIFF tiles...): its error, and its
    warning (which alone would let the decode go on), become an unusable image too."""
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    monkeypatch.setattr(images.ImageOps, "exif_transpose", lambda img, in_place: raise_it())
    with pytest.raises(Unusable, match="over --max-image-pixels 50000000"):
        load_image(tmp_path / "a.png", 4, MEAN, STD)


def spider_with_a_bad_stack_header() -> bytes:
    """A SPIDER image whose header says 'image 1 of a stack' without a stack: PIL's SPIDER
    plugin then raises AttributeError ('no attribute stkoffset') from Image.open."""
    content = bytearray(encoded(Image.new("F", (16, 16)), "SPIDER"))
    content[104:108] = struct.pack("<f", 1.0)  # header float 27, imgnumber (PIL writes little-endian)
    return bytes(content)


def corrupt_files() -> dict[str, bytes]:
    png = encoded(Image.new("RGB", (16, 16), (200, 10, 10)), "PNG")
    jpeg = encoded(Image.new("RGB", (16, 16), (200, 10, 10)), "JPEG")
    return {
        "empty.png": b"",
        "text.png": b"not an image at all",
        "cut_header.png": png[:20],  # inside IHDR
        "cut_data.jpg": jpeg[: len(jpeg) // 2],
        "zero_width.png": png_bytes(0, 16, bit_depth=8),
        "spider.png": spider_with_a_bad_stack_header(),  # AttributeError: the old code let it through
    }


def test_corrupt_files_are_unusable_each_with_a_reason(tmp_path):
    files = corrupt_files()
    ds = image_list(tmp_path, files)
    for i, name in enumerate(files):
        assert ds[i][0] is None, name
        reason = ds.why_skipped(i)
        assert reason.startswith(("the image does not decode (", "the image has no pixels")), (name, reason)
        assert "\n" not in reason
    assert "AttributeError" in ds.why_skipped(list(files).index("spider.png"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "TGA", "SGI"])
def test_damaged_files_of_every_format_never_raise(tmp_path, fmt):
    """Valid images cut short or with bytes changed at random (fixed seed): each item is a
    finite tensor or None, whatever PIL raised on the way (OSError, ValueError, SyntaxError...)."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    good = encoded(img.convert("P") if fmt == "GIF" else img, fmt)
    files = {}
    for k in range(40):
        content = bytearray(good)
        if k % 2:
            content = content[: int(rng.integers(0, len(content)))]
        else:
            for _ in range(int(rng.integers(1, 8))):
                content[int(rng.integers(0, len(content)))] = int(rng.integers(0, 256))
        files[f"{k}.img"] = bytes(content)
    ds = image_list(tmp_path, files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's notes on corrupt metadata must not leak out either
        items = [ds[i][0] for i in range(len(ds))]
    assert all(x is None or (x.shape == (3, 8, 8) and torch.isfinite(x).all()) for x in items)


def test_what_is_not_a_file_is_unusable_and_says_so(tmp_path):
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")  # opening it would wait forever for a writer
    paths = [str(tmp_path / n) for n in ("folder.png", "pipe.png", "missing.png")]
    ds = ImageList(tmp_path, paths, [0, 0, 0], ["a"], 8, MEAN, STD)
    assert [ds[i][0] for i in range(3)] == [None, None, None]
    assert [ds.why_skipped(i) for i in range(3)] == [
        "it is a directory, not an image file", "it is not a regular file (a pipe or device?)",
        "the file does not exist"]


def test_a_box_off_the_image_skips_it(tmp_path):
    Image.new("RGB", (20, 16)).save(tmp_path / "a.png")
    ds = ImageList(tmp_path, [str(tmp_path / "a.png")], [0], ["a"], 8, MEAN, STD, boxes=[(25.0, 3.0, 33.0, 11.0)])
    assert ds[0][0] is None
    assert ds.why_skipped(0) == "the box (left, top, right, bottom) = (25, 3, 33, 11) lies outside the 20 x 16 image"


@pytest.mark.parametrize("bad", [-1, 2.5, True, "50"])
def test_the_limit_must_be_a_count_of_pixels(tmp_path, bad):
    with pytest.raises(DataError, match="--max-image-pixels must be 0"):
        ImageList(tmp_path, [], [], ["a"], 8, MEAN, STD, max_pixels=bad)


# EXIF orientation. The stored 16 x 16 JPEG has four flat 8 x 8 quadrants, rows top to bottom:
# [[R, G], [B, W]]. Each tag value asks for the transform below before display (EXIF 2.3, tag 0x0112),
# worked by hand: e.g. 6 = turn 90 degrees clockwise, so the stored left column, read bottom to top,
# becomes the top row: [[B, R], [W, G]].
R, G, B, W = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
DISPLAYED = {
    1: [[R, G], [B, W]],
    2: [[G, R], [W, B]],  # mirrored left-right
    3: [[W, B], [G, R]],  # turned 180 degrees
    4: [[B, W], [R, G]],  # mirrored top-bottom
    5: [[R, B], [G, W]],  # transposed (mirrored along the main diagonal)
    6: [[B, R], [W, G]],  # turned 90 degrees clockwise
    7: [[W, G], [B, R]],  # transversed (mirrored along the other diagonal)
    8: [[G, W], [R, B]],  # turned 90 degrees anticlockwise
}


def oriented_jpeg(path, orientation: int) -> None:
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    for (row, col), colour in {(0, 0): R, (0, 1): G, (1, 0): B, (1, 1): W}.items():
        pixels[row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = colour
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_exif_orientation_is_followed(tmp_path, orientation):
    oriented_jpeg(tmp_path / "photo.jpg", orientation)
    x = load_image(tmp_path / "photo.jpg", 16, MEAN, STD)  # 16 -> 16: no resampling
    for row in range(2):
        for col in range(2):
            quadrant = x[:, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].mean(dim=(1, 2)) * 255
            assert torch.allclose(quadrant, torch.tensor(DISPLAYED[orientation][row][col], dtype=torch.float32),
                                  atol=6), (row, col)


def test_boxes_refer_to_the_displayed_image(tmp_path):
    oriented_jpeg(tmp_path / "photo.jpg", 6)  # displayed: [[B, R], [W, G]]
    x = load_image(tmp_path / "photo.jpg", 8, MEAN, STD, box=(8.0, 0.0, 16.0, 8.0))  # the top-right quadrant
    assert torch.allclose(x.mean(dim=(1, 2)) * 255, torch.tensor(R, dtype=torch.float32), atol=6)


def test_training_data_in_memory_leaves_out_what_evaluate_skips(tmp_path):
    files = {"ok.png": encoded(Image.new("RGB", (10, 10), (0, 255, 0)), "PNG"),
             "big.png": encoded(Image.new("RGB", (12, 10)), "PNG"),  # 120 pixels: over the limit of 100
             "bad.png": b"broken"}
    ds = image_list(tmp_path, files, max_pixels=100)
    with pytest.warns(DataWarning) as caught:
        memory = in_memory(ds)
    x, y, index = memory.tensors
    assert x.shape == (1, 3, 8, 8) and index.tolist() == [0]
    assert torch.allclose(x[0, 1], torch.ones(8, 8))
    messages = [str(w.message) for w in caught]
    assert messages[0] == (f"skipped training image {tmp_path / 'big.png'}: the image is 12 x 10 pixels "
                           "(0.0 megapixels), over --max-image-pixels 100: raise the limit to use it (0: no limit)")
    assert messages[1].startswith(f"skipped training image {tmp_path / 'bad.png'}: the image does not decode")


def test_training_data_none_usable(tmp_path):
    ds = image_list(tmp_path, {"a.png": b"broken", "b.png": b"broken"})
    with pytest.raises(DataError, match=r"none of the 2 training images can be used \(the first: .*a.png: the image"):
        in_memory(ds)


def test_a_file_name_that_is_not_utf8_is_refused_up_front(tmp_path):
    """Python holds such a name as surrogates; writing it to per_image.csv failed after the whole run."""
    from protobench.data.imagelist import ImageFolder

    (tmp_path / "data" / "class0").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "data" / "class0" / "ok.png")
    with open(os.fsencode(tmp_path / "data" / "class0") + b"/caf\xe9.png", "wb") as f:
        f.write(encoded(Image.new("RGB", (4, 4)), "PNG"))
    with pytest.raises(DataError) as err:
        ImageFolder(tmp_path / "data", 4, MEAN, STD)
    assert str(err.value).startswith("the file name b'/") and str(err.value).endswith(
        "/class0/caf\\xe9.png' is not UTF-8: rename it (e.g. with convmv) so that results can name it")


def test_evaluate_and_finetune_take_the_limit(tmp_path, tiny_ckpt, image_folder):
    """The folder's images are 40 x 40 = 1600 pixels; one more is 50 x 40 = 2000."""
    from typer.testing import CliRunner

    from protobench.cli.app import MAX_PIXELS, app

    assert MAX_PIXELS == MAX_IMAGE_PIXELS  # the CLI's default, written out so that --help needs no torch
    big = tmp_path / "data" / "class0" / "big.png"
    Image.new("RGB", (50, 40)).save(big)
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out",
                                 str(tmp_path / "o"), "--steps", "1", "--max-image-pixels", "1999"])
    assert result.exit_code == 0, result.output
    assert (f"skipped image {big}: the image is 50 x 40 pixels (0.0 megapixels), over --max-image-pixels 1999: "
            "raise the limit to use it (0: no limit)") in " ".join(result.stderr.split())
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["skipped_images"] == [str(big)]
    strict = runner.invoke(app, ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out",
                                 str(tmp_path / "s"), "--steps", "1", "--max-image-pixels", "1999", "--strict"])
    assert strict.exit_code == 2 and "Traceback" not in strict.output
    assert f"error: cannot use image {big}: the image is 50 x 40 pixels" in " ".join(strict.stderr.split())
    negative = runner.invoke(app, ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out",
                                   str(tmp_path / "n"), "--max-image-pixels", "-1"])
    assert negative.exit_code == 2 and "--max-image-pixels must be 0 (no limit) or a positive" in negative.stderr
    tune = runner.invoke(app, ["finetune", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", str(tmp_path / "f"),
                               "--epochs", "1", "--last-epochs", "0", "--no-push", "--max-image-pixels", "1999"])
    assert tune.exit_code == 0, tune.output
    assert f"skipped training image {big}: the image is 50 x 40 pixels" in " ".join(tune.stderr.split())


def test_training_data_too_large_for_memory_is_screened_by_header(tmp_path):
    """Over the memory budget the images are decoded each epoch: what the headers show unusable
    is left out up front, with the same warnings; the rest keep their dataset index."""
    files = {"bad.png": b"broken",
             "ok.png": encoded(Image.new("RGB", (10, 10), (0, 255, 0)), "PNG"),
             "big.png": encoded(Image.new("RGB", (12, 10)), "PNG"),  # 120 pixels: over the limit of 100
             "ok2.png": encoded(Image.new("RGB", (10, 10), (0, 0, 255)), "PNG")}
    ds = image_list(tmp_path, files, max_pixels=100)
    with pytest.warns(DataWarning) as caught:
        training = in_memory(ds, budget=1)
    assert [training[i][2] for i in range(len(training))] == [1, 3]
    assert torch.allclose(training[1][0][2], torch.ones(8, 8))  # ok2.png: blue
    assert [str(w.message).split(":")[0] for w in caught] == [
        f"skipped training image {tmp_path / 'bad.png'}", f"skipped training image {tmp_path / 'big.png'}"]
    assert "12 x 10 pixels" in str(caught[1].message)
