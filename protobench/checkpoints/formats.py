"""Checkpoint files: protobench's own safetensors format, and telling file kinds apart.

protobench's format is one `.safetensors` file; its metadata holds
`{"protobench": FORMAT_VERSION, "adapter": name, "config": <JSON>}`. Loading it never
unpickles anything.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
import struct
from typing import Any, BinaryIO

from protobench.errors import CheckpointError
from protobench.files import write_safetensors
from protobench.checkpoints.limits import limit, short

FORMAT_VERSION = "1"


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_FAMILY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a registry name: never an import path
# safetensors dtype -> bytes per element
_ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise CheckpointError(f"checkpoint {path} is a broken symbolic link: it points to {os.readlink(path)}, "
                                  "which does not exist") from None
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CheckpointError(f"checkpoint {path} is a symbolic link loop: it never reaches a file") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None


def open_checkpoint(path: str | os.PathLike) -> BinaryIO:
    """Open a checkpoint for reading: regular files only, each other kind of path with its own message."""
    path = str(path)
    mode = _stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    for test, what in _NOT_REGULAR:
        if test(mode):
            raise CheckpointError(f"checkpoint {path} is {what}, not a regular file: protobench reads checkpoints "
                                  "from regular files only (copy it to a file first)")
    try:  # O_NONBLOCK: a pipe swapped in after the check above cannot make open() wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    return f


def sniff_bytes(head: bytes) -> str:
    """Guess what a file is from its first 64 bytes: 'safetensors', 'zip' (torch >= 1.6),
    'legacy' (pre-1.6 torch pickle), 'html', 'empty' or 'unknown'."""
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "legacy"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "html"
    return "unknown"


def sniff(path: str | os.PathLike) -> str:
    """sniff_bytes of a checkpoint file's first bytes (see open_checkpoint for what is refused)."""
    with open_checkpoint(path) as f:
        return sniff_bytes(f.read(64))


def describe_unreadable(path: str | os.PathLike, kind: str) -> str:
    """One line saying why a file of this kind is not a checkpoint we can read."""
    if kind == "empty":
        return f"{path} is empty (0 bytes): the download or copy did not finish"
    if kind == "html":
        return f"{path} is an HTML page, not a checkpoint: download the file itself, not the page that links to it"
    return f"{path} is not a checkpoint protobench can read (neither safetensors nor a torch file)"


def _json(text: str | bytes, path: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: nesting deeper than the parser goes
        raise CheckpointError(f"{path}: its {what} is not valid JSON ({str(err)[:100]})") from None


def _tensor_bytes(entry: Any) -> tuple[int, int] | None:
    """(declared bytes, bytes its offsets span) of one safetensors header entry; None if malformed."""
    if not isinstance(entry, dict) or entry.get("dtype") not in _ST_ITEMSIZE:
        return None
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [*(shape or []), *(offsets or [])])
    if not (isinstance(shape, list) and len(shape) <= 16 and isinstance(offsets, list) and len(offsets) == 2 and ints):
        return None
    return math.prod(shape) * _ST_ITEMSIZE[entry["dtype"]], offsets[1] - offsets[0]


def check_safetensors(f: BinaryIO, path: str) -> None:
    """Check the sizes a safetensors header declares against the file before any tensor is read."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise CheckpointError(f"refusing to load {path}: its safetensors header declares {n} bytes, "
                              f"but the file holds {size}; it is truncated or damaged")
    header = _json(f.read(n), path, "safetensors header")
    if not isinstance(header, dict) or len(header) > limit("MAX_TENSORS"):
        raise CheckpointError(f"{path}: its safetensors header is not a table of at most "
                              f"{limit('MAX_TENSORS')} tensors")
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        sizes = _tensor_bytes(entry)
        if sizes is None or sizes[0] != sizes[1]:
            raise CheckpointError(f"{path}: tensor {name[:60]!r} has a malformed safetensors record "
                                  "(its dtype, shape and offsets disagree)")
        if entry["data_offsets"][1] > size - 8 - n:
            raise CheckpointError(f"{path}: tensor {name[:60]!r} lies past the end of the file; "
                                  "it is truncated or damaged")
        total += sizes[0]
    if total > size - 8 - n:
        raise CheckpointError(f"refusing to load {path}: its tensors declare {total} bytes but the file holds "
                              f"{size - 8 - n} bytes of data (overlapping tensors)")


def read_protobench(path: str | os.PathLike, with_classes: bool = False) -> tuple:
    """Read a protobench safetensors checkpoint -> (adapter name, config, tensors), and its recorded
    class names (or None) when `with_classes`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = str(path)
    with open_checkpoint(path) as f:
        check_safetensors(f, path)
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is a damaged or truncated safetensors file ({err})") from err
    if "protobench" not in meta or "adapter" not in meta:
        raise CheckpointError(
            f"{path} is a safetensors file without protobench metadata; "
            "convert the original checkpoint with `protobench convert`"
        )
    if meta["protobench"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} uses protobench checkpoint format {short(meta['protobench'])}; "
                              f"this protobench reads format {FORMAT_VERSION!r}: upgrade protobench")
    adapter = meta["adapter"]
    if not _FAMILY_NAME.fullmatch(adapter) or adapter == "auto":
        raise CheckpointError(f"{path} names adapter {short(adapter)}, which is not a model family's name; "
                              "protobench never imports code a checkpoint names: pass --adapter NAME")
    config = _json(meta.get("config", "{}"), path, "architecture metadata")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its architecture metadata is a JSON {type(config).__name__}, not an object")
    return (adapter, config, tensors, recorded_classes(path, meta)) if with_classes else (adapter, config, tensors)


def recorded_classes(path: str | os.PathLike, meta: dict[str, str]) -> tuple[str, ...] | None:
    """The class names a protobench checkpoint's metadata records (`classes`, a JSON list of names in
    logit order), or None when it records none."""
    if "classes" not in meta:
        return None
    try:
        names = json.loads(meta["classes"])
    except (ValueError, RecursionError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) <= 1000 for n in names):
        raise CheckpointError(f"{path}: its class names (metadata 'classes') are not a JSON list of names; "
                              "the file is damaged")
    return tuple(names)


def write_protobench(path: str | os.PathLike, adapter: str, config: dict[str, Any], tensors: dict[str, Any],
                     extra: dict[str, str] | None = None) -> None:
    """Write a protobench checkpoint atomically (a crash never leaves half a file)."""
    meta = {"protobench": FORMAT_VERSION, "adapter": adapter, "config": json.dumps(config, sort_keys=True)}
    meta.update(extra or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_safetensors(path, tensors, meta)


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _kind(t: Any) -> str:
    return "complex" if t.is_complex() else "float" if t.is_floating_point() else "integer"


def check_state(own: dict[str, Any], tensors: dict[str, Any], path: str,
                what: str = "the architecture in its metadata") -> None:
    """One-line error unless `tensors` has exactly the names, shapes and kinds of dtype of `own` (a state
    dict, possibly of a model on the meta device), with finite values only."""
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    common = sorted(set(own) & set(tensors))
    wrong = [k for k in common if own[k].shape != tensors[k].shape]
    dtype = [k for k in common if _kind(own[k]) != _kind(tensors[k])]
    if missing or unexpected or wrong or dtype:
        parts = [f"{label} {[n[:60] for n in names[:3]]}{' ...' if len(names) > 3 else ''}"
                 for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong),
                                      ("wrong dtype", dtype)) if names]
        raise CheckpointError(f"{path}: weights do not fit {what} ({'; '.join(parts)})")
    for k in common:
        if tensors[k].is_floating_point() and not bool(tensors[k].isfinite().all()):
            raise CheckpointError(f"{path}: {k[:60]} holds NaN or infinite values; the model would compute nonsense")


def load_state(model: Any, tensors: dict[str, Any], path: str,
               what: str = "the architecture in its metadata") -> None:
    """load_state_dict with a one-line error naming what does not fit."""
    check_state(model.state_dict(), tensors, path, what)
    model.load_state_dict(tensors)
