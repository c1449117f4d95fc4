"""The two torch.save layouts, read with every declared size checked before anything is allocated.

- zip (torch >= 1.6): `<root>/data.pkl` holds the pickle; each storage is a member
  `<root>/data/<key>`. torch writes them uncompressed (STORED): a compressed member, or one
  whose declared size does not fit in the file, is refused (a zip bomb).
- legacy (pre-1.6): five pickles in a row (magic number, protocol, system info, the object,
  the storage keys), then each storage's bytes. The object's pickle declares every storage's
  size, and torch would allocate them before reading a byte: here their total must fit in
  the file first.

A storage is read into a tensor of exactly its declared size; a tensor is a view of one, and
a view that covers more elements than its storage holds (stride 0, say) is refused, so the
tensors of a file never hold more data than the file. The unpickling itself, with its
allowlist of names, is `protobench.checkpoints.pickles`' business: these readers take it as `unpickle`.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

import torch

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch's legacy format
LEGACY_PROTOCOL = 1001
MAX_DIMS = 16  # a tensor's rank; real checkpoints stay below 6
Unpickle = Callable[..., Any]  # (stream, persistent_load=None) -> the unpickled object


class Refused(pickle.UnpicklingError):
    """The file asks for something protobench never does (a name, an instruction, a call)."""


class Oversized(pickle.UnpicklingError):
    """A size the file declares does not fit in the file."""


class NotTorchFile(pickle.UnpicklingError):
    """A pickle, but not one torch.save wrote."""


class BigEndian(pickle.UnpicklingError):
    """A checkpoint written on a big-endian machine (its storages' bytes would need swapping)."""


@dataclass(frozen=True)
class StorageType:
    """What a pickled storage class name (`torch.FloatStorage`) stands for: its dtype, nothing callable."""

    dtype: torch.dtype


@dataclass(frozen=True)
class Storage:
    data: torch.Tensor  # 1-D uint8: the storage's bytes (a slice of its root for a legacy view)
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return self.data.numel() // _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value if isinstance(value, str) else None


def tensor_view(storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    """A tensor over `storage`, refused unless every element it reaches lies inside the storage."""
    shaped = all(isinstance(s, (tuple, list)) and len(s) <= MAX_DIMS and all(map(_is_count, s)) for s in (size, stride))
    if not isinstance(storage, Storage) or not _is_count(offset) or not shaped or len(size) != len(stride):
        raise pickle.UnpicklingError("a tensor record is malformed")
    numel = math.prod(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel else offset
    if numel > storage.numel or (numel and last >= storage.numel):
        raise Oversized(f"holds a tensor of shape {tuple(size)[:6]} that reaches past its storage of "
                        f"{storage.numel} elements")
    start = storage.data.storage_offset() // _itemsize(storage.dtype) + offset
    return torch.empty(0, dtype=storage.dtype).set_(storage.data.untyped_storage(), start, tuple(size), tuple(stride))


class _Bounded:
    """A file's read/readline that never ask for more than the file has left (no huge buffers)."""

    def __init__(self, f: io.BufferedReader, size: int):
        self.f, self.size = f, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.f.tell())
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.f.readline(min(max(0, self.size - self.f.tell()), 1 << 16))


def _fill(f: io.BufferedReader, data: torch.Tensor, what: str) -> torch.Tensor:
    """Read exactly data.numel() bytes into `data` (1-D uint8), straight from the file."""
    if data.numel() and f.readinto(memoryview(data.numpy())) != data.numel():
        raise EOFError(f"{what} ends early")
    return data


# ---------------------------------------------------------------- zip (torch >= 1.6)


def _zip_members(f: io.BufferedReader, size: int) -> dict[str, zipfile.ZipInfo]:
    infos = zipfile.ZipFile(f).infolist()  # reads the central directory only
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise Refused(f"holds a compressed member {info.filename[:60]!r}; torch.save never compresses, "
                          "and protobench does not inflate (a zip bomb would)")
        if info.file_size != info.compress_size or info.header_offset + info.file_size > size:
            raise Oversized(f"declares a member {info.filename[:60]!r} of {info.file_size} bytes that does not fit")
    if sum(info.file_size for info in infos) > size:
        raise Oversized(f"declares {sum(i.file_size for i in infos)} bytes of members in a file of {size} bytes")
    return {info.filename: info for info in infos}


def _member(f: io.BufferedReader, size: int, info: zipfile.ZipInfo) -> torch.Tensor:
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"member {info.filename[:60]!r} has no local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > size:
        raise Oversized(f"has a member {info.filename[:60]!r} that runs past the end of the file")
    f.seek(start)
    return _fill(f, torch.empty(info.file_size, dtype=torch.uint8), f"member {info.filename[:60]!r}")


def read_zip(f: io.BufferedReader, size: int, unpickle: Unpickle) -> Any:
    members = _zip_members(f, size)
    pickles = [name for name in members if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise NotTorchFile("a zip archive without torch.save's data.pkl")
    root = pickles[0][: -len("data.pkl")]
    order = members.get(root + "byteorder")
    if order is not None and (order.file_size > 16 or _member(f, size, order).numpy().tobytes() != b"little"):
        raise BigEndian()
    loaded: dict[str, Storage] = {}

    def persistent_load(pid: Any) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and _text(pid[0]) == "storage"):
            raise pickle.UnpicklingError("a storage reference is malformed")
        _, kind, key, _location, numel = pid  # every location is read onto the CPU
        if not isinstance(kind, StorageType) or not isinstance(key, str) or not _is_count(numel):
            raise pickle.UnpicklingError("a storage reference is malformed")
        if key not in loaded:
            info = members.get(f"{root}data/{key}")
            if info is None:
                raise pickle.UnpicklingError(f"storage {key[:20]!r} is missing from the archive")
            if numel * _itemsize(kind.dtype) != info.file_size:
                raise Oversized(f"has a storage {key[:20]!r} that declares {numel} elements but holds "
                                f"{info.file_size} bytes")
            loaded[key] = Storage(_member(f, size, info), kind.dtype)
        return Storage(loaded[key].data, kind.dtype)

    data = _member(f, size, members[pickles[0]])
    return unpickle(io.BytesIO(data.numpy().tobytes()), persistent_load)


# ---------------------------------------------------------------- legacy (torch < 1.6)


class _LegacyStorages:
    """persistent_load for a legacy file: storages declared by the pickle, filled after it."""

    def __init__(self, size: int):
        self.size, self.declared = size, 0
        self.roots: dict[str, tuple[torch.Tensor, torch.dtype, int]] = {}
        self.views: dict[str, Storage] = {}

    def __call__(self, pid: Any) -> Any:
        kind = _text(pid[0]) if isinstance(pid, tuple) and pid else None
        if kind == "module" and len(pid) == 4:  # (class, source file, source): only the class is kept
            return pid[1]
        if kind != "storage" or len(pid) != 6:
            raise pickle.UnpicklingError("a storage reference is malformed")
        _, stype, key, _location, numel, view = pid
        key = _text(key)
        if not isinstance(stype, StorageType) or key is None or not _is_count(numel):
            raise pickle.UnpicklingError("a storage reference is malformed")
        if key not in self.roots:
            nbytes = numel * _itemsize(stype.dtype)
            self.declared += nbytes
            if self.declared > self.size:
                raise Oversized(f"declares {self.declared} bytes of storages in a file of {self.size} bytes")
            self.roots[key] = (torch.empty(nbytes, dtype=torch.uint8), stype.dtype, numel)
        data, dtype, total = self.roots[key]
        if view is None:
            return Storage(data, dtype)
        return self._view(data, dtype, total, view)

    def _view(self, data: torch.Tensor, dtype: torch.dtype, total: int, view: Any) -> Storage:
        if not (isinstance(view, tuple) and len(view) == 3 and _text(view[0]) is not None
                and _is_count(view[1]) and _is_count(view[2]) and view[1] + view[2] <= total):
            raise pickle.UnpicklingError("a storage view is malformed")
        item = _itemsize(dtype)
        return self.views.setdefault(_text(view[0]), Storage(data[view[1] * item:(view[1] + view[2]) * item], dtype))

    def fill(self, f: io.BufferedReader, keys: Any) -> None:
        """Read the storages' bytes, in the order the file lists them (each: int64 count, then data)."""
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(self.roots):
            raise pickle.UnpicklingError("the list of storages does not match the storages the pickle uses")
        for key in keys:
            data, _, numel = self.roots[key]
            header = f.read(8)
            if len(header) != 8 or struct.unpack("<q", header)[0] != numel:
                raise pickle.UnpicklingError(f"storage {key[:20]!r} is not the size the pickle declared")
            _fill(f, data, f"storage {key[:20]!r}")


def read_legacy(f: io.BufferedReader, size: int, unpickle: Unpickle) -> Any:
    stream = _Bounded(f, size)
    if unpickle(stream) != MAGIC_NUMBER:
        raise NotTorchFile("a pickle that torch.save did not write")
    if unpickle(stream) != LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("an unknown legacy torch format")
    info = unpickle(stream)
    if not isinstance(info, dict) or info.get("little_endian", True) is not True:
        raise BigEndian()
    storages = _LegacyStorages(size)
    result = unpickle(stream, storages)
    storages.fill(f, unpickle(stream))
    return result


def read_torch_file(f: io.BufferedReader, kind: str, unpickle: Unpickle) -> Any:
    """Read an open torch.save file ('zip' or 'legacy', as checkpoint.sniff says)."""
    size = os.fstat(f.fileno()).st_size
    return (read_zip if kind == "zip" else read_legacy)(f, size, unpickle)
