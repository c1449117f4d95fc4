"""What meta.json records so a result can be traced and reproduced: dataset fingerprint,
protobench's git commit, determinism switches."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, Sequence


def dataset_fingerprint(files: Sequence[str], root: str | os.PathLike) -> dict[str, Any]:
    """sha256 of the dataset's file list (paths relative to its root, in dataset order) and sizes.

    Cheap (one stat per file, no reading) and independent of where the dataset lives, so two
    machines holding the same copy agree. A missing file counts with size -1.
    """
    digest = hashlib.sha256()
    total = 0
    for path in files:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        total += max(size, 0)
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        digest.update(f"{rel}\t{size}\n".encode("utf-8", "surrogateescape"))
    return {"sha256": digest.hexdigest(), "files": len(files), "bytes": total}


def git_commit(package_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """{'commit', 'dirty'} of the checkout protobench runs from; None when installed from a wheel.

    The checkout's top level must be the directory holding the package, so a virtualenv that
    happens to sit inside some other repository is not mistaken for a protobench checkout.
    """
    package_dir = Path(package_dir or Path(__file__).parents[1]).resolve()  # protobench/, above run/
    source = package_dir.parent
    try:
        top = _git(source, "rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() != source:
            return None
        commit = _git(source, "rev-parse", "HEAD")
        status = _git(source, "status", "--porcelain", "--untracked-files=no")
    except OSError:  # no git executable
        return None
    if commit is None:
        return None
    return {"commit": commit, "dirty": bool(status)}


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def package_version(package: str) -> str | None:
    """An installed package's version; None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def determinism() -> dict[str, bool]:
    """torch's determinism switches as they were during the run."""
    import torch

    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


def dataset_fingerprint_of(dataset, data: str) -> dict[str, Any]:
    """The dataset's fingerprint as meta.json records it (protobench report checks it again)."""
    return dataset_fingerprint(getattr(dataset, "files", dataset.paths), getattr(dataset, "root", data))
