"""How the API's functions end: a ProtobenchError as one line from the caller's line."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from protobench.errors import ProtobenchError

F = TypeVar("F", bound=Callable[..., Any])


def public(fn: F) -> F:
    """A ProtobenchError leaves the API as the CLI prints it: one line, its traceback starting at the
    caller's line, not deep inside the loop."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProtobenchError as err:
            raise err.with_traceback(None) from None

    return call  # type: ignore[return-value]
