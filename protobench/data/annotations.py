"""Annotation files as text tables: read strictly, so anything they cannot mean is one DataError
naming the file and the line, and nothing they name can lead outside the dataset."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Callable

from protobench.errors import DataError

# An annotation file larger than this is refused before it is read: CUB's largest is 0.5 MB, Cars' 0.2 MB,
# and the parsed table of 16 MiB of short lines still fits in a few hundred MB.
ANNOTATION_BYTES = 16 << 20
ID = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() accepts '²', which int() refuses


Check = Callable[[str, list[str]], None]  # (where: "file:line", the columns after the id) -> DataError if bad


def read_table(path: Path, columns: int, check: Check | None = None) -> dict[int, list[str]]:
    """A whitespace-separated annotation file -> {first column as int: the other columns}.

    Every line must hold `columns` columns starting with a distinct id; `check` vets the rest."""
    table: dict[int, list[str]] = {}
    first_line: dict[int, int] = {}
    for number, line in enumerate(annotation_text(path).split("\n"), 1):  # not splitlines(): '\x85' is no line end
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=columns - 1)
        where = f"{path}:{number}"
        if len(parts) != columns or not ID.fullmatch(parts[0]):
            raise DataError(f"{where}: expected {columns} columns starting with an id, got {short(line)}")
        image_id = int(parts[0])
        if image_id in table:
            raise DataError(f"{where}: id {image_id} is listed twice (first on line {first_line[image_id]})")
        if check is not None:
            check(where, parts[1:])
        table[image_id], first_line[image_id] = parts[1:], number
    return table


def annotation_text(path: Path) -> str:
    """An annotation file's text: a DataError, naming it, if it is missing, not a file, huge or not UTF-8."""
    if not path.exists():
        raise DataError(f"missing annotation file {path}: is the dataset unpacked whole?")
    if not path.is_file():
        raise DataError(f"{path} is not a file: the annotation file must be a plain text file")
    try:
        size = path.stat().st_size
        if size > ANNOTATION_BYTES:
            raise DataError(f"{path} is {size / 2**20:.0f} MiB, more than an annotation file may be "
                            f"({ANNOTATION_BYTES >> 20} MiB): is it the dataset's own file?")
        data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a byte-order mark, as Windows editors write
    except OSError as err:  # permissions, a disk error, a file removed meanwhile
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}): "
                        "save the annotation file as UTF-8") from None


def short(value, limit: int = 80) -> str:
    """repr(value), cut to about `limit` characters (a hostile line may be megabytes long)."""
    shown = repr(value)
    return shown if len(shown) <= limit + 2 else shown[:limit] + "..."


def relative_name(name: str, where: str, folder: str) -> str:
    """`name` if it stays inside `folder`: a DataError for an absolute path, a drive, '..' or a NUL byte
    (backslashes count as separators, as they would on Windows)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if "\0" in name or name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in parts:
        raise DataError(f"{where}: image path {short(name)} is not inside {folder}/ (an absolute path, a drive, "
                        f"'..' or a NUL byte): the annotations may only name files under {folder}/")
    return name


def check_image_folder(path: Path) -> None:
    """A missing image folder is one error, not one skipped-image warning per annotation."""
    if not path.is_dir():
        raise DataError(f"{path} is not a folder of images: is the dataset unpacked whole?")
