"""Errors the CLI turns into one clear line and a non-zero exit code."""


class ProtobenchError(Exception):
    """A user-facing problem: the message says what went wrong and what to do."""

    exit_code = 2


class CheckpointError(ProtobenchError):
    """A checkpoint that cannot be read, is unsafe, or belongs to another model."""


class DataError(ProtobenchError):
    """A dataset that is missing, empty, undecodable or does not fit the model."""


class AdapterError(ProtobenchError):
    """An unknown adapter name or an adapter that cannot be imported."""


class Interrupted(ProtobenchError):
    """A run stopped by Ctrl-C; its partial results are kept for --resume."""

    exit_code = 130


class ProtobenchWarning(UserWarning):
    """Something the user should know; the run goes on."""


class DataWarning(ProtobenchWarning):
    """An image skipped because it does not decode (an error under --strict)."""


class MemoryWarning(ProtobenchWarning):
    """A batch that did not fit in memory, evaluated in smaller pieces."""
