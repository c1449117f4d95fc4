"""What the CLI prints: results on stdout; errors, warnings, notes and progress on stderr.

Every piece of text that came from a user or a file (paths, model names, error messages
quoting them) is printed literally: never parsed as rich markup, where `a[/]b` would crash
the printer and `[bold]x[/bold]` would silently lose its brackets.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable

import typer
from rich.console import Console
from rich.text import Text

from protobench.run.failures import out_of_memory, save_traceback

out_console = Console()
err_console = Console(stderr=True)

BUG = 3  # exit code of an unexpected exception: a bug in protobench, an adapter, or torch


def literal(text: Any, style: str = "") -> Text:
    """`text` exactly as it is, as one rich Text (undecodable file-name bytes shown as \\udcxx)."""
    plain = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return Text(plain, style=style)


def line(label: str, style: str, message: Any, console: Console = err_console) -> None:
    """'label: message' with the label styled and the message literal, on one line."""
    console.print(Text.assemble((f"{label}:", style), " ", literal(message)), highlight=False, soft_wrap=True)


def say(message: Any) -> None:
    """A plain line of results on stdout."""
    out_console.print(literal(message), highlight=False, soft_wrap=True)


def fail(message: Any, code: int = 2) -> None:
    line("error", "bold red", message)
    raise typer.Exit(code)


def run_library(fn: Callable, *args: Any, trace_dir: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """Call into the library: a ProtobenchError is one red line and its exit code; any other
    exception is a bug: one line naming it and the file its traceback was saved to, exit 3."""
    from protobench.errors import ProtobenchError

    try:
        return fn(*args, **kwargs)
    except ProtobenchError as err:
        fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as err:  # noqa: BLE001 - the point: no traceback on the terminal, one line instead
        saved = save_traceback(err, trace_dir)
        if out_of_memory(err):  # not a bug: the options asked for more memory than there is
            fail(f"out of memory ({type(err).__name__}): lower --batch-size or --workers (or the image size), or "
                 f"use a machine with more memory; {saved}", 2)
        message = " ".join(str(err).split())
        message = message if len(message) <= 300 else message[:297] + "..."
        fail(f"an unexpected {type(err).__name__} ({message or 'no message'}): this is a bug in protobench or in "
             f"the adapter or torch it ran; {saved}; please report it", BUG)


@contextmanager
def warnings_to_console():
    """Library warnings as one yellow line each ('note:' for notices), each one shown."""
    import warnings

    from protobench.errors import Notice, ProtobenchWarning

    def show(message, category, filename, lineno, file=None, line_=None):
        if issubclass(category, Notice):
            line("note", "cyan", message)
        else:
            line("warning", "yellow", message)

    with warnings.catch_warnings():
        warnings.simplefilter("always", ProtobenchWarning)
        warnings.showwarning = show
        yield


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """--adapter-option key=value (values parsed as JSON when they can be)."""
    import json

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--adapter-option wants key=value, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except (ValueError, RecursionError):
            options[key] = value
    return options
