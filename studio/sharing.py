"""The temporary public link: made after the local server is up, shown in the page, revocable without a restart.

Gradio's own `launch(share=True)` makes the tunnel inside `launch()` and, when it cannot, prints several lines of
advice. The studio instead launches locally and opens the same tunnel (`gradio.networking.setup_tunnel`, the frp
client Gradio ships) in the background, so a failure is one line in the console and in the page and the studio
keeps serving locally, and so the owner can close the tunnel from the page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LIFETIME_S = 7 * 24 * 3600  # Gradio's share server keeps a link for up to a week (best effort)


@dataclass(frozen=True)
class ShareState:
    """Where the public link stands."""

    status: str  # "off" | "starting" | "live" | "failed" | "revoked"
    url: str = ""
    started: float = 0.0  # time.time() when the link went live
    expires: float = 0.0  # time.time() when the share server drops it at the latest
    reason: str = ""  # why it failed, one line

    def line(self) -> str:
        """One line for the console and the page."""
        if self.status == "live":
            left = max(self.expires - time.time(), 0)
            return (
                f"Shared at {self.url} (login required) until {time.strftime('%Y-%m-%d %H:%M', time.localtime(self.expires))}"
                f" ({left / 3600:.0f} h left)."
            )
        if self.status == "starting":
            return "Making the public link…"
        if self.status == "failed":
            return f"Public link unavailable: {self.reason}. The studio keeps serving on this machine."
        if self.status == "revoked":
            return "The public link was revoked; the studio serves on this machine only."
        return ""


def _gradio_tunnel(blocks: Any) -> tuple[str, Callable[[], None]]:
    """Open Gradio's share tunnel to the running server; returns the URL and how to close it."""
    from urllib.parse import urlparse, urlunparse

    from gradio import networking, tunneling

    before = set(map(id, tunneling.CURRENT_TUNNELS))
    url = networking.setup_tunnel(
        local_host=blocks.server_name,
        local_port=blocks.server_port,
        share_token=blocks.share_token,
        share_server_address=getattr(blocks, "share_server_address", None),
        share_server_tls_certificate=getattr(blocks, "share_server_tls_certificate", None),
    )
    url = urlunparse((getattr(blocks, "share_server_protocol", None) or "https",) + urlparse(url)[1:])
    mine = [t for t in tunneling.CURRENT_TUNNELS if id(t) not in before]

    def close() -> None:
        for tunnel in mine:
            tunnel.kill()
            if tunnel in tunneling.CURRENT_TUNNELS:
                tunneling.CURRENT_TUNNELS.remove(tunnel)

    return url, close


class ShareLink:
    """One public link for the studio's lifetime: start once, revoke at any time."""

    def __init__(self, opener: Callable[[Any], tuple[str, Callable[[], None]]] = _gradio_tunnel) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._state = ShareState("off")
        self._close: Callable[[], None] | None = None
        self._blocks: Any = None
        self.changed = threading.Event()  # set whenever the state moves (tests and the console wait on it)

    @property
    def state(self) -> ShareState:
        with self._lock:
            return self._state

    def _set(self, state: ShareState) -> None:
        with self._lock:
            self._state = state
        self.changed.set()

    def start(self, blocks: Any, *, background: bool = True) -> None:
        """Open the tunnel to `blocks`' local server (launched already)."""
        self._blocks = blocks
        self._set(ShareState("starting"))
        if background:
            threading.Thread(target=self._open, name="share-link", daemon=True).start()
        else:
            self._open()

    def _open(self) -> None:
        try:
            url, close = self._opener(self._blocks)
        except Exception as exc:  # noqa: BLE001 - any failure is one line; the studio serves locally
            reason = _one_line(exc)
            self._set(ShareState("failed", reason=reason))
            print(self.state.line(), flush=True)
            return
        with self._lock:
            revoked = self._state.status == "revoked"
            if not revoked:
                self._close = close
                now = time.time()
                self._state = ShareState("live", url=url, started=now, expires=now + LIFETIME_S)
                if self._blocks is not None:
                    self._blocks.share_url = url
        self.changed.set()
        if revoked:  # revoked while it was being made
            close()
            return
        print(self.state.line(), flush=True)

    def revoke(self) -> ShareState:
        """Close the tunnel: the link stops working at once; the local studio keeps running."""
        with self._lock:
            close, self._close = self._close, None
            if self._state.status in ("live", "starting"):
                self._state = ShareState("revoked")
            if self._blocks is not None:
                self._blocks.share_url = None
        if close is not None:
            close()
        self.changed.set()
        log.info("public link revoked")
        return self.state


def _one_line(exc: BaseException) -> str:
    """The most telling line of an exception chain (Gradio wraps the network error)."""
    parts = []
    while exc is not None and len(parts) < 3:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if text not in parts:
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    return " (".join(parts)[:240] + ")" * (len(parts) - 1)
