"""The catalogue of publicly released models (`protobench zoo`, `protobench evaluate --model NAME`).

The entries are data (protobench/zoo.json): family, source (a Hugging Face Hub file, a Zenodo
record's file, or a page to download from), file names and checksums where the host publishes them,
dataset, split, preprocessing, license and the published clean accuracy with its source. Each entry
says which of its facts were read from the host and which are unknown (docs/zoo.md).

`locate` finds an entry's checkpoint without downloading anything unless asked: a Hub file in the Hub
cache (`--download` fetches it), anything in the zoo directory (`--zoo-dir`, `PROTOBENCH_ZOO`, else
`~/.cache/protobench/zoo`) under `ZOO_DIR/NAME/`; otherwise one error line says where to get it and
where to put it.
"""

from __future__ import annotations

import difflib
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from protobench.errors import OptionError

KINDS = ("hub", "zenodo", "page")


@lru_cache(maxsize=1)
def catalogue() -> dict[str, dict[str, Any]]:
    """Every entry by name, as zoo.json lists them."""
    data = json.loads(resources.files("protobench").joinpath("zoo.json").read_text(encoding="utf-8"))
    return {entry["name"]: entry for entry in data["entries"]}


def entry(name: str) -> dict[str, Any]:
    found = catalogue()
    if name not in found:
        close = difflib.get_close_matches(name, list(found), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise OptionError(f"no model {name!r} in the catalogue{hint}: `protobench zoo list` shows them")
    return found[name]


def zoo_dir(given: str | os.PathLike | None = None) -> Path:
    if given is not None:
        return Path(given)
    return Path(os.environ.get("PROTOBENCH_ZOO") or Path.home() / ".cache" / "protobench" / "zoo")


def hub_uri(item: dict[str, Any]) -> str:
    src = item["source"]
    return f"hf://{src['repo']}/{src['path']}" + (f"@{src['revision']}" if src.get("revision") else "")


def _in_zoo_dir(item: dict[str, Any], folder: Path) -> str | None:
    """ZOO_DIR/NAME as a model directory, or the one checkpoint file in it."""
    home = folder / item["name"]
    if not home.is_dir():
        return None
    if item["family"] == "cabrnet" and (home / "model_arch.yml").is_file():  # a CaBRNet model directory
        return str(home)
    files = sorted(p for p in home.iterdir() if p.is_file() and not p.name.startswith("."))
    return str(files[0]) if len(files) == 1 else None


def where_to_get(item: dict[str, Any], folder: Path) -> str:
    src, target = item["source"], folder / item["name"]
    if src["kind"] == "hub":
        return f"add --download to fetch {hub_uri(item)} into the Hugging Face cache, or put it in {target}/"
    if src["kind"] == "zenodo":
        return f"download {src['url']} (Zenodo record {src['record']}), {item['place'].replace('ZOO_DIR/NAME', str(target))}"
    return f"{item['place'].replace('ZOO_DIR/NAME', str(target))} (from {src['url']})"


def locate(name: str, folder: str | os.PathLike | None = None, download: bool = False) -> tuple[str, dict[str, Any]]:
    """(the checkpoint to pass as --ckpt, the run's source record: entry, published accuracy, download)."""
    item, home = entry(name), zoo_dir(folder)
    source: dict[str, Any] = {"zoo": name, "download": download}
    if item["accuracy"].get("value") is not None:
        source["published_accuracy"] = {"value": item["accuracy"]["value"], "source": item["accuracy"]["source"]}
    local = _in_zoo_dir(item, home)
    if local is not None:
        return local, source
    if item["source"]["kind"] == "hub":
        from protobench.checkpoints import hub

        wanted = hub.parse(hub_uri(item))
        if download or hub.cached(wanted) is not None:
            return hub_uri(item), source
    raise OptionError(f"model {name!r} is not on this machine: {where_to_get(item, home)}")


def rows() -> list[dict[str, str]]:
    """One line per entry for `protobench zoo list`."""
    out = []
    for item in catalogue().values():
        acc = item["accuracy"].get("value")
        src = item["source"]
        where = {"hub": lambda: f"hf://{src['repo']}", "zenodo": lambda: f"zenodo {src['record']}",
                 "page": lambda: src["url"]}[src["kind"]]()
        out.append({"name": item["name"], "family": item["family"], "dataset": item["dataset"],
                    "published accuracy": "" if acc is None else f"{acc:.2f}%", "source": where})
    return out
