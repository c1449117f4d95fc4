"""`protobench zoo list | show NAME`: the catalogue of released models (protobench/zoo.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from protobench.cli.console import literal, out_console, run_library

zoo_app = typer.Typer(help="The catalogue of publicly released models: `protobench evaluate --model NAME` runs one.")
MODEL_HELP = "A model from the catalogue (`protobench zoo list`), found in the Hugging Face cache or --zoo-dir."
ZOO_DIR_HELP = "Where catalogue models that cannot be fetched live: ZOO_DIR/NAME/ [$PROTOBENCH_ZOO or ~/.cache/protobench/zoo]."
DOWNLOAD_HELP = "Allow downloading an hf:// checkpoint or catalogue model missing from the cache (never with HF_HUB_OFFLINE=1)."


@zoo_app.command("list")
def zoo_list() -> None:
    """One line per released model: family, dataset, published accuracy, where it is hosted."""
    from protobench.zoo import rows

    found = run_library(rows)
    table = Table(title=f"protobench zoo: {len(found)} models (docs/zoo.md)")
    for column in found[0]:
        table.add_column(column, no_wrap=column == "name")
    for row in found:
        table.add_row(*(literal(str(v)) for v in row.values()))
    out_console.print(table)


@zoo_app.command("show")
def zoo_show(name: str = typer.Argument(..., help="The model's name in `protobench zoo list`.")) -> None:
    """Everything the catalogue says about one model, and where its file goes."""
    from protobench.zoo import entry, where_to_get, zoo_dir

    item = run_library(entry, name)
    print(json.dumps(item, indent=1, ensure_ascii=False))
    print(f"to get it: {where_to_get(item, zoo_dir())}")


def zoo_model(model: str, zoo_dir: Optional[Path], download: bool, adapter: list[str]) -> tuple[Path, list[str], dict[str, Any]]:
    """evaluate --model NAME: (the checkpoint, the adapter, the run's source record)."""
    from protobench.zoo import entry, locate

    ckpt, source = run_library(locate, model, zoo_dir, download)
    return Path(ckpt), adapter or [entry(model)["family"]], source
