"""One protobench run writing an output directory at a time (evaluate, finetune, report).

The lock is an advisory `flock` on the directory itself: no lock file is written, and the kernel
releases it whatever ends the process (an error, Ctrl-C, a kill, a crash). A second run into the
same directory stops at once with one line instead of mixing its files with the first one's.
"""

from __future__ import annotations

import fcntl
import functools
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from protobench.errors import OutputError
from protobench.files import check_writable_dir, writing


@contextmanager
def holding(out: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of directory `out` (created if needed) while the block runs; OutputError when another
    process holds it. Directories created here and still empty at the end are removed again, so a run
    refused for its input leaves no trace. Under torchrun only rank 0 locks: the ranks of one run write
    together."""
    path = Path(out)
    if os.environ.get("RANK", "0") != "0" or (path.exists() and not path.is_dir()):
        yield  # not the writing rank; or a file, which the command itself refuses with its own message
        return
    check_writable_dir(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another protobench run is writing {path}: wait until it ends, or choose another "
                              "--out") from None
        yield
    finally:
        os.close(fd)  # releases the lock
        for folder in created:  # innermost first; only while empty
            try:
                folder.rmdir()
            except OSError:
                break


def holds_out(where: Callable[..., Any]) -> Callable:
    """Decorator: the function runs holding the lock of the directory `where(*args, **kwargs)` names."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with holding(where(*args, **kwargs)):
                return fn(*args, **kwargs)

        return run

    return wrap
