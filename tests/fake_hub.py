"""A small local HTTP server that plays the Hugging Face Hub for tests: the repo-info and tree API, HEAD and GET on
resolve URLs, with the headers huggingface_hub checks (X-Repo-Commit, ETag, Content-Length, X-Error-Code). Point
huggingface_hub at it with HF_ENDPOINT (a child process) or `point_at` (this process)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves the files of local folders as Hub repositories: the repo-info API, HEAD and GET on resolve URLs."""

    def __init__(self, repos: dict[str, Path], *, chunk_delay: float = 0.0, refused: dict[str, int] | None = None):
        self.repos = repos
        self.gets: list[str] = []
        self.chunk_delay = chunk_delay  # seconds per 64 KB sent: a slow network, for progress and cancel
        self.refused = refused or {}  # repo -> 401 (private, not logged in) or 403 (gated), as the Hub answers
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

            def _refuse(self, repo: str) -> bool:
                status = hub.refused.get(repo)
                if status is None:
                    return False
                self.send_response(status)
                self.send_header("X-Error-Code", "GatedRepo" if status == 403 else "RepoNotFound")
                self.send_header("X-Error-Message", "Access to this model is restricted.")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True

            def _file(self, send_body: bool) -> None:
                # /{owner}/{name}/resolve/{revision}/{path}
                parts = self.path.split("?")[0].lstrip("/").split("/")
                repo, rest = "/".join(parts[:2]), parts[4:]
                if self._refuse(repo):
                    return
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
                    for at in range(0, len(data), 65536):
                        self.wfile.write(data[at : at + 65536])
                        if hub.chunk_delay:
                            time.sleep(hub.chunk_delay)

            def do_HEAD(self):  # noqa: N802
                self._file(send_body=False)

            def do_GET(self):  # noqa: N802
                if self.path.startswith("/api/models/"):
                    repo = "/".join(self.path.split("?")[0].split("/")[3:5])
                    if self._refuse(repo):
                        return
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


def point_at(monkeypatch: Any, url: str) -> None:
    """What HF_ENDPOINT does, set after huggingface_hub was imported."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
