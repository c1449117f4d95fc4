"""Where a checkpoint comes from: a local path, or a Hugging Face Hub file fetched through its cache.

`resolve` turns `--ckpt` into a local path and a record for meta.json (`source`): for a Hub file its
repository, requested and resolved revision (commit) and the sha256 of every file read, the companion
files a registered family reads beside it included (fetched from the same commit).
"""

from __future__ import annotations

import os
from typing import Any

from protobench.checkpoints import hub
from protobench.checkpoints.formats import sha256
from protobench.errors import CheckpointError


def companions(filename: str) -> list[str]:
    """The files registered families read beside a checkpoint of this name."""
    from protobench.models.families import usable_families

    name = filename.rsplit("/", 1)[-1]
    return sorted({extra for _, family in usable_families() for extra in family.companion_files(name)})


def main_file(directory: str) -> str:
    """The file of a model directory whose companions a family reads beside it (the directory if none)."""
    for name in sorted(os.listdir(directory)):
        if companions(name) and os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return directory


def resolve(ckpt: str, download: bool = False) -> tuple[str, dict[str, Any] | None]:
    """(local path, provenance record or None for a plain local path)."""
    if not hub.is_hub(ckpt):
        return ckpt, None
    wanted = hub.parse(ckpt)
    path, record = hub.fetch(wanted, download)
    record["sha256"] = {wanted.filename: sha256(path)}
    pinned = hub.HubFile(wanted.repo_id, wanted.filename, record["revision"] or wanted.revision)
    for name in companions(wanted.filename):
        beside = pinned.sibling(name)
        try:
            extra, _ = hub.fetch(beside, download)
        except CheckpointError as err:  # the family's loader says what a missing companion means
            record.setdefault("missing", {})[beside.filename] = str(err)
            continue
        record["sha256"][beside.filename] = sha256(extra)
    return path, record


def prepare(cfg: Any) -> str:
    """Resolve cfg.ckpt to a local path (cfg.source gains the Hub record) and note the accuracy its file name
    records when nothing else published one; returns the path."""
    from protobench.run.sanity import accuracy_in_name

    path, record = resolve(cfg.ckpt, bool(cfg.source.get("download")))
    if record is not None:
        cfg.source["hub"], cfg.ckpt = record, path
    elif os.path.isdir(path):  # a model saved as a directory: its main file, so that its sha256 is recorded
        path = cfg.ckpt = main_file(path)
        beside = {name: sha256(os.path.join(os.path.dirname(path), name)) for name in companions(path)
                  if os.path.isfile(os.path.join(os.path.dirname(path), name))}
        if beside:
            cfg.source["companions_sha256"] = beside
    in_name = accuracy_in_name(path)
    if "published_accuracy" not in cfg.source and in_name is not None:
        cfg.source["published_accuracy"] = {"value": in_name, "source": f"the file name {path.rsplit('/', 1)[-1]}"}
    return cfg.ckpt


def report(source: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """What meta.json records of the checkpoint's source, and the accuracy check (run/sanity.py)."""
    from protobench.run.sanity import check

    recorded = {k: v for k, v in source.items() if k != "download"}
    found = check(source.get("published_accuracy"), summary.get("acc_before"), int(summary.get("images") or 0))
    return {"source": recorded, "accuracy_check": found} if recorded or found else {}
