"""The keep-alive timer: a daemon thread that asks the manager, every few seconds, to park or unload idle models.

What counts as idle and what is done lives in `ModelManager.expire_idle`; this only calls it on a clock, like
Ollama's keep_alive and LM Studio's idle TTL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class KeepAliveTimer:
    """Calls `expire()` every `interval` seconds in a daemon thread until stopped."""

    def __init__(self, expire: Callable[[], object], interval: float = 5.0) -> None:
        self._expire = expire
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="keep-alive", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._expire()
            except Exception:  # noqa: BLE001 - a failed round must not stop the timer; the next one retries
                log.exception("idle unload failed")
