"""Unexpected exceptions: tell a bug from running out of memory, and keep the traceback in a file
(the terminal gets one line, a report gets the whole story)."""

from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path

from protobench.files import TRACEBACK_FILE


def out_of_memory(err: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, or a CPU allocation failure (torch raises RuntimeError)."""
    text = str(err)
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def save_traceback(err: BaseException, directory: str | os.PathLike | None) -> str:
    """Write the full traceback to DIRECTORY/protobench-traceback.txt (or a temporary file)."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    if directory is not None and Path(directory).is_dir():
        path = Path(directory) / TRACEBACK_FILE
        try:
            path.write_text(text, encoding="utf-8", errors="backslashreplace")
            return f"the full traceback is in {path}"
        except OSError:
            pass  # e.g. the bug was that the directory cannot be written: a temporary file then
    try:
        fd, name = tempfile.mkstemp(prefix="protobench-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
        return f"the full traceback is in {name}"
    except OSError as io_err:
        return f"its traceback could not be saved ({io_err.strerror})"
