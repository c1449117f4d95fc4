"""meta.json's reproducibility record: git commit of a checkout, determinism switches, fingerprint."""

import json
import subprocess
from pathlib import Path

import torch
from typer.testing import CliRunner

import protobench
from protobench.cli.app import app
from protobench.run.provenance import git_commit


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_git_commit_only_for_a_protobench_checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / "protobench").mkdir(parents=True)
    (repo / "protobench" / "__init__.py").write_text("")
    git(repo, "init", "-q")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    head = git(repo, "rev-parse", "HEAD")
    assert git_commit(repo / "protobench") == {"commit": head, "dirty": False}
    (repo / "protobench" / "__init__.py").write_text("x = 1\n")
    assert git_commit(repo / "protobench") == {"commit": head, "dirty": True}
    (repo / "venv" / "site-packages" / "protobench").mkdir(parents=True)  # an install inside another repo
    assert git_commit(repo / "venv" / "site-packages" / "protobench") is None
    (tmp_path / "plain" / "protobench").mkdir(parents=True)
    assert git_commit(tmp_path / "plain" / "protobench") is None


def test_meta_records_commit_determinism_and_fingerprint(tmp_path, tiny_ckpt, image_folder):
    out = tmp_path / "o"
    torch.use_deterministic_algorithms(True)
    try:
        result = CliRunner().invoke(app, ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", str(out),
                                          "--steps", "1", "--limit", "3"])
    finally:
        torch.use_deterministic_algorithms(False)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["deterministic_algorithms"] is True
    assert meta["dataset_fingerprint"]["files"] == 12 and len(meta["dataset_fingerprint"]["sha256"]) == 64
    assert meta["command"].startswith("protobench")
    source = Path(protobench.__file__).resolve().parent.parent
    if (source / ".git").exists():  # run from a checkout (an editable install)
        assert meta["git"]["commit"] == git(source, "rev-parse", "HEAD")
