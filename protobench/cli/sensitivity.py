"""`protobench sensitivity`: several models over a grid of the benchmark's settings
(protobench.run.sensitivity; docs/metrics.md, Sensitivity). cli/app.py registers the command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from protobench.cli.console import fail, run_library, say, warnings_to_console


def sensitivity_command(
    ckpt: list[Path] = typer.Option([], metavar="FILE", help="A model's checkpoint; two or more (the built-in "
                                    "demo model is given by its path, as one of them)."),
    data: Path = typer.Option(..., metavar="DIR", help="Dataset directory, or protoshapes (the demo's data)."),
    out: Path = typer.Option(Path("protobench-results/sensitivity"), metavar="DIR", help="Result directory (reruns "
                             "reuse every finished grid point)."),
    axes: str = typer.Option("eps,steps,attack,region,box_quantile,margin,plc_quantile", metavar="LIST",
                             help="Which settings to vary, comma-separated (one at a time, the others default)."),
    limit: Optional[int] = typer.Option(None, metavar="N", help="Evaluate a fixed-seed random subset of N images. "
                                        "[default: all]"),
    device: str = typer.Option("auto", metavar="DEVICE", help="auto, cpu or cuda[:N]."),
    batch_size: Optional[int] = typer.Option(None, metavar="N", help="Images per batch. [default: 32 on a CPU, 256 "
                                             "on a GPU]"),
) -> None:
    """Evaluate models over a grid of settings: sensitivity.csv, a plot per metric, Kendall's tau vs the default."""
    from protobench.report.figures import sensitivity as draw
    from protobench.api.evaluate import run_evaluation
    from protobench.run.sensitivity import sensitivity
    from protobench.run.sweep import unique_names

    if len(ckpt) < 2:
        fail("give two or more --ckpt: the sensitivity command compares the models' ranking")

    def run_one(path: str, protocol, where: Path) -> None:
        run_evaluation(path, str(data), protocol, out=where, limit=limit, device=device, batch_size=batch_size,
                       overwrite=True)

    models = dict(zip(unique_names([str(c) for c in ckpt]), [str(c) for c in ckpt]))
    with warnings_to_console():
        result = run_library(sensitivity, models, [a.strip() for a in axes.split(",") if a.strip()], out, run_one,
                             log=say, draw=draw, images={"data": str(data.resolve()) if data.exists() else str(data),
                                                    "limit": limit}, trace_dir=out)
    say(f"{result['points']} grid points per model; wrote {result['out']}/ (sensitivity.csv, tau.csv, "
        "sensitivity-<metric>.png, runs/)")
