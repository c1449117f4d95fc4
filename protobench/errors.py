"""Errors the CLI turns into one clear line and a non-zero exit code.

Exit codes: 0 done; 1 the run finished but something failed (a model of a multi-model run,
a regression found by compare); 2 a ProtobenchError (bad input or option, unusable files,
an output that cannot be written); 3 a bug (any other exception: the CLI saves its traceback);
130 interrupted (Ctrl-C), partial results kept for --resume.
"""


class ProtobenchError(Exception):
    """A user-facing problem: the message says what went wrong and what to do."""

    exit_code = 2


class CheckpointError(ProtobenchError):
    """A checkpoint that cannot be read, is unsafe, or belongs to another model."""


class DataError(ProtobenchError):
    """A dataset that is missing, empty, undecodable or does not fit the model."""


class AdapterError(ProtobenchError):
    """An unknown adapter name or an adapter that cannot be imported."""


class OptionError(ProtobenchError, ValueError):
    """An option value out of its range (checked before any work starts or any file is written).
    Also a ValueError, as library callers caught before this class existed."""


class OutputError(ProtobenchError):
    """An output location that cannot be written (read-only, under /proc, below a file, disk full)."""


class Interrupted(ProtobenchError):
    """A run stopped by Ctrl-C; its partial results are kept for --resume."""

    exit_code = 130


class ProtobenchWarning(UserWarning):
    """Something the user should know; the run goes on."""


class Notice(ProtobenchWarning):
    """Not a problem, but worth a line (e.g. --resume found nothing to resume: a fresh run starts)."""


class DataWarning(ProtobenchWarning):
    """An image skipped because it does not decode (an error under --strict)."""


class MemoryWarning(ProtobenchWarning):
    """A batch that did not fit in memory, evaluated in smaller pieces."""
