"""Output files: whole-or-nothing writes, and one clear line when a location cannot be written."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from protobench.errors import OutputError

TRACEBACK_FILE = "protobench-traceback.txt"  # where the CLI saves the traceback of a bug, in --out
FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk or quota: the place is fine, the space is not


def _default_mode() -> int:
    """The mode a plain open() would give a new file (0o666 minus the umask): mkstemp's is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failure to write `path` (read-only, permissions, disk full...) into an OutputError."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        todo = "free some space or choose another location" if err.errno in FULL else "choose a writable location"
        raise OutputError(f"cannot write {path}: {reason}; {todo}") from None


def check_writable_dir(path: str | os.PathLike) -> None:
    """Before any work: an OutputError if directory `path` cannot be created or written in.

    Probes by making (and removing) a directory in `path` or its nearest existing parent:
    permission bits say nothing about read-only mounts, /proc, or root's rights."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {path}: {existing} is a file, not a directory; choose another location")
    with writing(path):
        os.rmdir(tempfile.mkdtemp(prefix=".protobench-probe-", dir=existing))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; once the block has written it, it replaces `path`."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            yield tmp
            os.chmod(tmp, _default_mode())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> None:
    """safetensors' save_file, atomically; its I/O failures (reported as SafetensorError '... (os error
    28)') become the OutputError of any other write, e.g. 'No space left on device; free some space'."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as err:
            code = re.search(r"os error (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1]))) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8; the bytes of a file name that are not UTF-8 (str surrogates) are written as \\udcXX
    escapes, so the file stays readable (strict encoding crashed at the end of a whole run)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
