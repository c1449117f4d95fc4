"""Builders of hostile and malformed checkpoint files, and a peak-memory probe, for the hardening tests.

Every file is made inside the test from a few bytes of pickle: `torch_zip` and
`torch_legacy` wrap a pickle in torch.save's two layouts, `Pickle` writes one by hand
(opcode by opcode), so a test can say exactly what the file declares.
"""

from __future__ import annotations

import gc
import io
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch

MAGIC = 0x1950A86A20F9469CFC6C


def torch_zip(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None, compress: bool = False,
              byteorder: str = "little") -> Path:
    """A torch >= 1.6 zip checkpoint: archive/data.pkl plus one member per storage."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method, compresslevel=1 if compress else None) as z:
        z.writestr("archive/data.pkl", pkl, compress_type=zipfile.ZIP_STORED)
        z.writestr("archive/byteorder", byteorder, compress_type=zipfile.ZIP_STORED)
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n", compress_type=zipfile.ZIP_STORED)
    return path


def torch_legacy(path: Path, pkl: bytes, keys: list[str] = (), storages: bytes = b"") -> Path:
    """A pre-1.6 checkpoint: magic number, protocol, system info, `pkl`, storage keys, storage bytes."""
    head = b"".join(pickle.dumps(v, protocol=2) for v in
                    (MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                   "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    path.write_bytes(head + pkl + pickle.dumps(list(keys), protocol=2) + storages)
    return path


class Storage:
    """Pickles as torch.save's reference to storage `key` of `numel` floats."""

    def __init__(self, key: str, numel: int, kind=torch.FloatStorage):
        self.key, self.numel, self.kind = key, numel, kind


class Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2 over a Storage, with any size and stride."""

    def __init__(self, storage: Storage, size, stride, offset=0):
        self.args = (storage, offset, tuple(size), tuple(stride), False, __import__("collections").OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class Call:
    """Pickles as a call func(*args) (what a hostile file asks the unpickler to do)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def dumps(obj, legacy: bool = False) -> bytes:
    """Pickle `obj` as torch.save would (protocol 2, storages as persistent ids)."""

    class _Pickler(pickle.Pickler):
        def persistent_id(self, value):
            if isinstance(value, Storage):
                base = ("storage", value.kind, value.key, "cpu", value.numel)
                return base + (None,) if legacy else base
            return None

    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def raw(*ops: bytes) -> bytes:
    """A pickle written opcode by opcode (protocol 2 header and STOP added)."""
    return b"\x80\x02" + b"".join(ops) + b"."


def global_op(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def binput(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def binget(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    raise KeyError(field)


def peak_growth_mb(fn, collect: bool = True) -> tuple[BaseException | None, float]:
    """Run fn(); return (what it raised, peak resident memory above the start, in MB).

    Resets the kernel's high-water mark (/proc/self/clear_refs) so the peak is this call's;
    `collect` first frees garbage, so the start is not inflated by the previous call's.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux /proc to measure peak memory")
    if collect:
        gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak-memory mark (/proc/self/clear_refs)")
    start = _status("VmRSS")
    raised = None
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 (the caller asserts on it)
        raised = err
    return raised, (_status("VmHWM") - start) / 1024
