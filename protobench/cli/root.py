"""The `protobench` command group itself: its help, --version, shell completion, and what bare
`protobench` does (print the help). The commands are added to it in cli/app.py."""

from __future__ import annotations

import typer
import typer.core

from protobench.cli.console import say

app = typer.Typer(add_completion=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Benchmark the spatial alignment of prototype networks' explanations (PLC / PAC / PRC). "
                       "Exit codes: 0 done; 1 the run finished but a model failed or compare found a "
                       "regression; 2 bad input, option or output location; 3 a bug (traceback saved to a "
                       "file); 130 interrupted. Shell completion: protobench --install-completion.")
# typer prints an argument's Python type beside its name (BASE <path>, RUN_DIR... <list[Path]>): the names,
# and the help beside them, say what to give
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]


def show_version(value: bool) -> None:
    if value:
        from protobench import __version__

        say(f"protobench {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_options(ctx: typer.Context, version: bool = typer.Option(
        False, "--version", is_eager=True, callback=show_version, help="Print protobench's version and exit.")) -> None:
    """Benchmark the spatial alignment of prototype networks' explanations (PLC / PAC / PRC)."""
    if ctx.invoked_subcommand is None:  # bare `protobench`: the help, not an error
        say(ctx.get_help())
