"""Checkpoints on the Hugging Face Hub: `hf://OWNER/REPO/PATH[@REVISION]`, read from the local cache first.

Through the optional `huggingface_hub` package (`pip install 'protobench[hub]'`). The cache is the
Hub's own (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`: the layout
`models--OWNER--REPO/{refs,snapshots/<commit>/PATH}`). Nothing is downloaded unless the caller
says so (`--download`), never with `HF_HUB_OFFLINE=1`; downloads come from `HF_ENDPOINT` (the Hub by
default) with the Hub client's progress bar. What is fetched is only a file: the loaders that read it
are the same safe ones as for a local file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protobench.errors import CheckpointError

PREFIXES = ("hf://", "hf:/")  # the second: what a path type makes of the first
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class HubFile:
    repo_id: str  # OWNER/REPO
    filename: str  # PATH inside the repository
    revision: str | None = None  # a branch, tag or commit; None: main

    @property
    def uri(self) -> str:
        return f"hf://{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")

    def sibling(self, name: str) -> HubFile:
        folder = self.filename.rpartition("/")[0]
        return HubFile(self.repo_id, f"{folder}/{name}" if folder else name, self.revision)


def is_hub(text: str) -> bool:
    return str(text).startswith(PREFIXES)


def parse(text: str) -> HubFile:
    """`hf://OWNER/REPO/PATH[@REVISION]` -> HubFile, or a one-line error saying what is wrong."""
    rest = str(text)[len("hf://"):] if str(text).startswith("hf://") else str(text)[len("hf:/"):]
    rest, at, revision = rest.rpartition("@") if "@" in rest.rsplit("/", 1)[-1] else (rest, "", "")
    parts = rest.split("/")
    usage = "write it as hf://OWNER/REPO/PATH[@REVISION], e.g. hf://lab/model/final/model_state.pth@main"
    if len(parts) < 3 or not all(_NAME.fullmatch(p) for p in parts[:2]):
        raise CheckpointError(f"{text} does not name a file on the Hugging Face Hub: {usage}")
    if any(p in ("", ".", "..") for p in parts[2:]) or (at and not re.fullmatch(r"[A-Za-z0-9._/-]{1,128}", revision)):
        raise CheckpointError(f"{text}: its path or revision is not a plain name inside the repository: {usage}")
    return HubFile("/".join(parts[:2]), "/".join(parts[2:]), revision or None)


def _client() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError("reading hf:// checkpoints needs the huggingface_hub package: "
                              "pip install 'protobench[hub]'") from None
    return huggingface_hub


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def cache_dir() -> Path:
    """The Hub's cache directory, read from the environment now (not when the client was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def commit_of(path: str | Path) -> str | None:
    """The commit a cached file belongs to: the name of its snapshots/<commit>/ directory."""
    parts = Path(path).parts
    found = [parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "snapshots"]
    return found[-1] if found and _COMMIT.fullmatch(found[-1]) else None


def cached(file: HubFile) -> str | None:
    """The file's path in the local cache, or None; reads only the disk."""
    hub = _client()
    found = hub.try_to_load_from_cache(file.repo_id, file.filename, cache_dir=str(cache_dir()),
                                       revision=file.revision or "main")
    return found if isinstance(found, str) and os.path.isfile(found) else None


def fetch(file: HubFile, download: bool = False) -> tuple[str, dict[str, Any]]:
    """(local path, record) of a Hub file: from the cache, else downloaded when `download` allows it."""
    path, downloaded = cached(file), False
    if path is None:
        where = f"not in the Hugging Face cache ({cache_dir()})"
        if offline():
            raise CheckpointError(f"{file.uri} is {where}, and HF_HUB_OFFLINE=1 forbids downloading it: unset "
                                  "HF_HUB_OFFLINE and add --download, or copy the file into the cache")
        if not download:
            raise CheckpointError(f"{file.uri} is {where}; protobench downloads only when asked: add --download "
                                  f"(from {endpoint()}), or run `hf download {file.repo_id} {file.filename}` first")
        path, downloaded = _download(file), True
    return path, {"uri": file.uri, "repo_id": file.repo_id, "filename": file.filename,
                  "revision_requested": file.revision or "main", "revision": commit_of(path), "downloaded": downloaded}


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _download(file: HubFile) -> str:
    hub = _client()
    try:
        return hub.hf_hub_download(file.repo_id, file.filename, revision=file.revision, cache_dir=str(cache_dir()),
                                   endpoint=endpoint())
    except Exception as err:  # noqa: BLE001 - the client's errors are many (HTTP, not found, gated, disk)
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"cannot download {file.uri} from {endpoint()}: {reason}") from None
