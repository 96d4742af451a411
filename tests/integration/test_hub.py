"""Hub ids: the local cache first, a download with progress through huggingface_hub, and clear reasons when the
model cannot be had. A small local HTTP server plays the Hub (same API routes and headers), so nothing leaves the
machine."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from studio.errors import ModelLoadError
from studio.models.specs import ModelSpec
from tests.managers import cpu_manager

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves the files of local folders as Hub repositories: the repo-info API, HEAD and GET on resolve URLs."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.gets: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _not_found(self, code: str) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Type", "application/json")
                body = json.dumps({"error": code}).encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _file(self, send_body: bool) -> None:
                # /{owner}/{name}/resolve/{revision}/{path}
                parts = self.path.split("?")[0].lstrip("/").split("/")
                repo, rest = "/".join(parts[:2]), parts[4:]
                folder = hub.repos.get(repo)
                path = folder / "/".join(rest) if folder else None
                if path is None or not path.is_file():
                    return self._not_found("EntryNotFound" if folder else "RepoNotFound")
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if send_body:
                    hub.gets.append("/".join(rest))
                    self.wfile.write(data)

            def do_HEAD(self):  # noqa: N802
                self._file(send_body=False)

            def do_GET(self):  # noqa: N802
                if self.path.startswith("/api/models/"):
                    repo = "/".join(self.path.split("?")[0].split("/")[3:5])
                    folder = hub.repos.get(repo)
                    if folder is None:
                        return self._not_found("RepoNotFound")
                    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
                    if "/tree/" in self.path:  # list_repo_tree
                        info = [
                            {"type": "file", "path": f, "size": (folder / f).stat().st_size, "oid": COMMIT}
                            for f in files
                        ]
                    else:  # repo_info
                        info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                    body = json.dumps(info).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self._file(send_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def point_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """What HF_ENDPOINT does, set after huggingface_hub was imported."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub_env(tmp_path, monkeypatch, tiny_models):
    """The tiny LM published as `tiny/lm` (plus a stray .bin the studio must not fetch) on a fake Hub, and an
    empty Hugging Face cache."""
    from huggingface_hub import constants

    repo = tmp_path / "repo"
    shutil.copytree(tiny_models.causal_lm, repo)
    (repo / "pytorch_model.bin").write_bytes(b"not wanted")
    (repo / "original").mkdir()
    (repo / "original" / "consolidated.00.pth").write_bytes(b"not wanted either")
    hub = FakeHub({"tiny/lm": repo})
    cache = tmp_path / "hf-cache"
    point_at(monkeypatch, hub.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield hub, cache
    hub.close()


def test_a_hub_id_downloads_with_progress_then_loads_from_the_cache(hub_env, monkeypatch):
    from tqdm import tqdm

    from studio.models.loading import load_causal_lm

    hub, _cache = hub_env
    bars: list[tuple[str, int]] = []
    real_update = tqdm.update

    def update(self, n=1):  # gr.Progress(track_tqdm=True) reads these same tqdm bars
        bars.append((str(getattr(self, "desc", "")), int(n or 0)))
        return real_update(self, n)

    monkeypatch.setattr(tqdm, "update", update)
    spec = ModelSpec("chat", "tiny/lm", "hub")
    lm = load_causal_lm(spec)
    assert lm.model.config.model_type == "llama" and "snapshots" in lm.source
    assert "model.safetensors" in hub.gets
    assert not any(g.endswith((".bin", ".pth")) for g in hub.gets), hub.gets
    assert sum(n for _, n in bars) > 0, "the download reports progress"
    hub.gets.clear()
    hub.close()  # the Hub goes away: the cached copy still loads, with no request
    again = load_causal_lm(spec, offline=True)
    assert again.source == lm.source and hub.gets == []


def test_offline_and_not_downloaded_says_so(hub_env):
    from studio.models.loading import load_causal_lm

    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"tiny/lm is not downloaded yet and the studio runs offline") as err:
        load_causal_lm(ModelSpec("chat", "tiny/lm", "hub"), offline=True)
    assert "starter model" in err.value.tip and time.monotonic() - t0 < 5


def test_no_network_says_so_within_seconds(hub_env):
    from studio.models.loading import load_causal_lm

    hub, _ = hub_env
    hub.close()  # nothing listens on its port any more
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"Hugging Face Hub is out of reach"):
        load_causal_lm(ModelSpec("chat", "tiny/lm", "hub"))
    assert time.monotonic() - t0 < 10


def test_an_id_that_does_not_exist_says_so(hub_env):
    from studio.models.loading import load_causal_lm

    with pytest.raises(ModelLoadError, match=r"nobody/nothing does not exist on the Hugging Face Hub"):
        load_causal_lm(ModelSpec("chat", "nobody/nothing", "hub"))


def test_an_image_model_not_downloaded_says_why_before_loading(hub_env, tmp_path):
    """The Image tab's Hub models: offline, or with the Hub out of reach, a model not in the cache is one clear
    line within seconds, before any load is tried."""
    from studio.engines.image import ImageEngine

    manager = cpu_manager(tmp_path)
    spec = ModelSpec("image", "stabilityai/sd-turbo", "hub")
    offline = ImageEngine(manager, tmp_path / "out", tmp_path / "models", offline=True)
    with pytest.raises(ModelLoadError, match=r"sd-turbo is not downloaded and the studio is offline"):
        offline.check_available(spec)
    hub, _ = hub_env
    hub.close()
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"not downloaded yet and the Hugging Face Hub is out of reach"):
        ImageEngine(manager, tmp_path / "out", tmp_path / "models").check_available(spec)
    assert time.monotonic() - t0 < 10
    assert manager.records() == []  # nothing was loaded
