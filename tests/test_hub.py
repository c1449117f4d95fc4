"""hf:// checkpoints: the Hugging Face cache first, downloads only when asked, from a local server in tests."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from protobench.checkpoints import hub
from protobench.errors import CheckpointError
from protobench.models.lookup import get_adapter

pytest.importorskip("huggingface_hub")
FIXTURE = Path(__file__).parent / "fixtures" / "cabrnet" / "protopnet"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "lab/tiny-model"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """An empty Hub cache of our own, the real endpoint made unreachable, online mode."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: any request fails at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def fill_cache(cache: Path, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """The Hub's documented cache layout: blobs by hash, snapshots/<commit>/PATH linking to them, refs/main."""
    root = cache / f"models--{REPO.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name, source in files.items():
        blob = root / "blobs" / digest(source)
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(source.read_bytes())
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return root / "snapshots" / commit


def test_uris_parse_with_and_without_revision_and_bad_ones_are_refused():
    assert hub.parse("hf://a/b/final/model_state.pth@v1.0") == hub.HubFile("a/b", "final/model_state.pth", "v1.0")
    assert hub.parse("hf:/a/b/m.pth") == hub.HubFile("a/b", "m.pth", None)  # as a path type writes it
    for bad in ("hf://a/b", "hf://a/b/../x.pth", "hf://a b/c/d.pth", "hf://a/b/c.pth@"):
        with pytest.raises(CheckpointError):
            hub.parse(bad)


def test_a_cached_file_is_read_with_its_companions_and_nothing_is_downloaded(hub_env):
    from protobench.run.sources import resolve

    snapshot = fill_cache(hub_env, {f"final/{p.name}": p for p in FIXTURE.iterdir()})
    path, record = resolve(f"hf://{REPO}/final/model_state.pth")
    assert Path(path) == snapshot / "final" / "model_state.pth"
    assert record["revision"] == COMMIT and not record["downloaded"]
    assert record["sha256"] == {f"final/{n}": digest(FIXTURE / n) for n in ("model_state.pth", "model_arch.yml",
                                                                             "dataset.yml")}
    assert get_adapter("auto").load(path).name == "cabrnet"


def test_offline_or_not_asked_a_missing_file_is_refused_without_a_request(hub_env, monkeypatch):
    server = Server({})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    with pytest.raises(CheckpointError, match="add --download"):
        hub.fetch(hub.parse(f"hf://{REPO}/m.pth"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE=1 forbids"):
        hub.fetch(hub.parse(f"hf://{REPO}/m.pth"), download=True)
    server.stop()
    assert server.requests == []


class Server:
    """A local stand-in for the Hub's download path: HEAD and GET /{repo}/resolve/{revision}/{path}."""

    def __init__(self, files: dict[str, bytes]):
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body: bool) -> None:
                owner.requests.append(f"{self.command} {self.path}")
                prefix = f"/{REPO}/resolve/"
                revision, _, name = self.path[len(prefix):].partition("/") if self.path.startswith(prefix) else ("", "", "")
                data = files.get(name.split("?")[0]) if revision in ("main", COMMIT) else None
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_from_a_local_server_then_evaluate_records_revision_and_sha256(hub_env, monkeypatch, tmp_path):
    from protobench.adapters.protopnet import ProtoPNetAdapter
    from protobench.core.protocol import EvalProtocol
    from protobench.run.evaluate import EvaluateConfig, evaluate
    from conftest import write_image_folder

    model = tmp_path / "10push0.7822.pth"
    ProtoPNetAdapter.tiny().save(str(model.with_suffix(".safetensors")))
    model.write_bytes(model.with_suffix(".safetensors").read_bytes())  # protobench's format under a ProtoPNet name
    server = Server({"models/10push0.7822.pth": model.read_bytes()})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    data = write_image_folder(tmp_path / "data", classes=3, per_class=1, size=32)
    cfg = EvaluateConfig(ckpt=f"hf://{REPO}/models/10push0.7822.pth", data=data, out=str(tmp_path / "out"),
                         protocol=EvalProtocol.make("default", steps=1), source={"download": True})
    with pytest.warns(UserWarning, match="published 78.22%"):
        result = evaluate(cfg)
    server.stop()
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    source = meta["source"]["hub"]
    assert source["revision"] == COMMIT and source["downloaded"] and source["revision_requested"] == "main"
    assert source["sha256"] == {"models/10push0.7822.pth": digest(model)}
    assert meta["checkpoint_sha256"] == digest(model)
    assert any(r.startswith("GET") for r in server.requests)
    check = meta["accuracy_check"]
    assert check["published"] == 78.22 and check["measured"] == round(result["summary"]["acc_before"], 2)
    assert check["ok"] is (abs(check["measured"] - 78.22) <= 2)
    # a second run reads the cache: the server is gone
    again = hub.fetch(hub.parse(f"hf://{REPO}/models/10push0.7822.pth"))
    assert again[1]["revision"] == COMMIT and not again[1]["downloaded"]


def test_the_cli_reads_an_hf_uri_from_the_cache(hub_env, tmp_path):
    from typer.testing import CliRunner

    from conftest import write_image_folder
    from protobench.cli import app

    fill_cache(hub_env, {f"final/{p.name}": p for p in FIXTURE.iterdir()})
    data = write_image_folder(tmp_path / "data", classes=3, per_class=1, size=16)
    result = CliRunner().invoke(app, ["evaluate", "--ckpt", f"hf://{REPO}/final/model_state.pth", "--data", data,
                                      "--steps", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["adapter"] == "cabrnet" and meta["source"]["hub"]["revision"] == COMMIT
    assert meta["source"]["hub"]["uri"] == f"hf://{REPO}/final/model_state.pth"


def test_protobench_evaluate_reads_an_hf_uri_as_the_cli_does(hub_env, tmp_path):
    import protobench
    from conftest import write_image_folder

    fill_cache(hub_env, {f"final/{p.name}": p for p in FIXTURE.iterdir()})
    data = write_image_folder(tmp_path / "data", classes=3, per_class=1, size=16)
    results = protobench.evaluate(f"hf://{REPO}/final/model_state.pth", data, steps=1, progress=False)
    assert results.meta["adapter"] == "cabrnet" and results.meta["source"]["hub"]["revision"] == COMMIT
    assert results.meta["source"]["hub"]["uri"] == f"hf://{REPO}/final/model_state.pth"
