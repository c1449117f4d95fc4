"""The command line: each command builds a config and calls one library function.

torch is imported inside the commands, so `protobench --help` and `protobench adapters` stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="Benchmark the spatial alignment of prototype networks' explanations (PLC / PAC / PRC).")
out_console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_library(fn, *args, **kwargs):
    """Call into the library; turn its user-facing errors into one red line and an exit code."""
    from protobench.errors import ProtobenchError

    try:
        return fn(*args, **kwargs)
    except ProtobenchError as err:
        fail(str(err), err.exit_code)
    except ValueError as err:  # bad option values found by the library
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted", 130)


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
        except json.JSONDecodeError:
            options[key] = value
    return options


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"protobench: {summary['model']} ({summary['images']} images)")
    for col in ("metric", "mean", "std", "95% CI", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, label in (("PLC", "PLC (location change, %)"), ("PAC", "PAC (activation change, %)"),
                        ("PRC", "PRC (rank change)")):
        table.add_row(label, f"{summary[f'{name}_mean']:.2f}", f"{summary[f'{name}_std']:.2f}",
                      f"[{summary[f'{name}_ci_low']:.2f}, {summary[f'{name}_ci_high']:.2f}]",
                      str(summary[f"{name}_n"]))
    table.add_row("accuracy before / after (%)", f"{summary['acc_before']:.1f} / {summary['acc_after']:.1f}", "", "", "")
    table.add_row("AC (accuracy change, points)", f"{summary['AC']:.1f}", "", "", "")
    return table


@app.command()
def evaluate(
    adapter: str = typer.Option("protopnet", help="Model family (see `protobench adapters`) or pkg.module:Class."),
    ckpt: Optional[Path] = typer.Option(None, help="Checkpoint file [default: the built-in demo model]."),
    data: Optional[Path] = typer.Option(None, help="ImageFolder directory (DIR/<class>/<image>), or protoshapes[:train] "
                                                   "(the demo data) [default: protoshapes]."),
    out: Optional[Path] = typer.Option(None, help="Result directory [default: protobench-results/<ckpt name>]."),
    protocol: str = typer.Option("default", help="default (pgd, clipped) or reference (the paper's code: noise, no clip)."),
    attack: Optional[str] = typer.Option(None, help="pgd or noise [default: from --protocol]."),
    eps: Optional[float] = typer.Option(None, help="L-inf radius in normalized units [0.4]."),
    step: Optional[float] = typer.Option(None, help="pgd step size [0.01]."),
    steps: Optional[int] = typer.Option(None, help="pgd steps [40]."),
    select: Optional[str] = typer.Option(None, help="top-proto or gt-protos [top-proto]."),
    margin: Optional[int] = typer.Option(None, help="Pixels around each protected box [10 at 224 px, scaled]."),
    clip: Optional[bool] = typer.Option(None, "--clip/--no-clip", help="Keep attacked images in the valid range."),
    batch_size: int = typer.Option(32, help="Images per batch."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    seed: int = typer.Option(0, help="Seeds the random start of each image and --limit's subset."),
    limit: Optional[int] = typer.Option(None, help="Evaluate a fixed-seed random subset of N images."),
    overwrite: bool = typer.Option(False, help="Replace results already in --out."),
    adapter_option: list[str] = typer.Option([], "--adapter-option", help="key=value passed to the adapter."),
) -> None:
    """Attack pixels outside each prototype's region and measure how far the explanation moves."""
    from protobench.benchmark import Protocol
    from protobench.demo import DEMO_DATA, demo_checkpoint
    from protobench.evaluate import EvaluateConfig
    from protobench.evaluate import evaluate as run_evaluate
    from protobench.progress import RichProgress

    if ckpt is None and (data is None or str(data).partition(":")[0] == DEMO_DATA):  # the built-in demo
        ckpt, data = Path(run_library(demo_checkpoint)), data or Path(DEMO_DATA)
        out = out or Path("protobench-results") / "demo"
    if ckpt is None or data is None:
        fail("give both --ckpt and --data, or neither to run the built-in demo")
    proto = run_library(Protocol.make, protocol, attack=attack, eps=eps, step=step, steps=steps, select=select,
                        margin=margin, clip=clip, seed=seed)
    cfg = EvaluateConfig(
        ckpt=str(ckpt), data=str(data), out=str(out or Path("protobench-results") / ckpt.stem),
        adapter=adapter, adapter_options=parse_options(adapter_option), protocol=proto, batch_size=batch_size,
        device=device, workers=workers, limit=limit, overwrite=overwrite,
    )
    result = run_library(run_evaluate, cfg, RichProgress(err_console))
    summary = result["summary"]
    out_console.print(summary_table(summary))
    if summary["zero_grad_images"]:
        err_console.print(f"[yellow]warning:[/] the pgd gradient was exactly zero on the attackable pixels for "
                          f"{summary['zero_grad_images']} images at some step (see zero_grad in per_image.csv)")
    out_console.print(f"results written to {result['out']}/ (per_image.csv, summary.csv, meta.json)")


demo_app = typer.Typer(help="The built-in demo: ProtoShapes data and a small ProtoPNet trained on it.")
app.add_typer(demo_app, name="demo")


@demo_app.command("export")
def demo_export(
    directory: Path = typer.Argument(..., help="New or empty directory to write DIR/<class>/<index>.png to."),
    split: str = typer.Option("test", help="train or test."),
    n: Optional[int] = typer.Option(None, help="Only the first N images [default: the whole split]."),
) -> None:
    """Write ProtoShapes images to disk (ImageFolder layout) to look at them or evaluate them as files."""
    from protobench.demo.shapes import export

    count = run_library(export, directory, split, n)
    out_console.print(f"wrote {count} {split} images to {directory}/<class>/")


@app.command()
def adapters() -> None:
    """List the model families protobench can load."""
    from protobench.adapter import available_adapters

    table = Table(title="adapters")
    table.add_column("name")
    table.add_column("family")
    for name, desc in sorted(available_adapters().items()):
        table.add_row(name, desc)
    out_console.print(table)


def main() -> None:
    app()
