"""Checkpoint files: protobench's own safetensors format, and telling file kinds apart.

protobench's format is one `.safetensors` file; its metadata holds
`{"protobench": FORMAT_VERSION, "adapter": name, "config": <JSON>}`. Loading it never
unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from protobench.errors import CheckpointError
from protobench.files import atomic_path

FORMAT_VERSION = "1"


def sniff(path: str | os.PathLike) -> str:
    """Guess what a file is from its first bytes: 'safetensors', 'zip' (torch >= 1.6),
    'legacy' (pre-1.6 torch pickle), 'html', 'empty' or 'unknown'."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "legacy"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "html"
    return "unknown"


def describe_unreadable(path: str | os.PathLike, kind: str) -> str:
    """One line saying why a file of this kind is not a checkpoint we can read."""
    if kind == "empty":
        return f"{path} is empty (0 bytes): the download or copy did not finish"
    if kind == "html":
        return f"{path} is an HTML page, not a checkpoint: download the file itself, not the page that links to it"
    return f"{path} is not a checkpoint protobench can read (neither safetensors nor a torch file)"


def read_protobench(path: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Read a protobench safetensors checkpoint -> (adapter name, config, tensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is a damaged or truncated safetensors file ({err})") from err
    if "protobench" not in meta or "adapter" not in meta:
        raise CheckpointError(
            f"{path} is a safetensors file without protobench metadata; "
            "convert the original checkpoint with `protobench convert`"
        )
    if meta["protobench"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} uses protobench checkpoint format {meta['protobench']!r}; "
                              f"this protobench reads format {FORMAT_VERSION!r}: upgrade protobench")
    try:
        config = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: its architecture metadata is not valid JSON ({err})") from err
    return meta["adapter"], config, tensors


def write_protobench(path: str | os.PathLike, adapter: str, config: dict[str, Any], tensors: dict[str, Any],
                     extra: dict[str, str] | None = None) -> None:
    """Write a protobench checkpoint atomically (a crash never leaves half a file)."""
    from safetensors.torch import save_file

    meta = {"protobench": FORMAT_VERSION, "adapter": adapter, "config": json.dumps(config, sort_keys=True)}
    meta.update(extra or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state(model: Any, tensors: dict[str, Any], path: str,
               what: str = "the architecture in its metadata") -> None:
    """load_state_dict with a one-line error naming what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label} {names[:3]}{' ...' if len(names) > 3 else ''}"
                 for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if names]
        raise CheckpointError(f"{path}: weights do not fit {what} ({'; '.join(parts)})")
    model.load_state_dict(tensors)
