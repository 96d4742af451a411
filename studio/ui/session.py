"""Per-browser-session state that several tabs share: which session a request comes from, and its stop flags."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def stop_on() -> Any:
    """A Stop button is enabled only while its page's run goes (Image and Speech tabs): on as the run starts..."""
    import gradio as gr

    return gr.Button(interactive=True)


def stop_off() -> Any:
    """...and off when it ends, however it ends."""
    import gradio as gr

    return gr.Button(interactive=False)


def session_key(request: Any | None) -> str:
    """The browser session a request comes from ("local" for a direct call): stop flags are kept per session."""
    return request.session_hash if request else "local"


class StopFlags:
    """Per-browser-session stop requests (the Stop button is never queued behind the reply it stops), and which
    sessions have a reply running, so that Clear can wait for a stopped reply's last message before emptying."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._running: Counter[str] = Counter()
        self._clears: Counter[str] = Counter()  # how many times each session's conversation was cleared
        self._clearing: Counter[str] = Counter()  # Clears still waiting for their session's reply to end
        self._lock = threading.Condition()

    def event(self, session: str) -> threading.Event:
        with self._lock:
            return self._flags.setdefault(session, threading.Event())

    def start(self, request: Any | None) -> threading.Event:
        """The cleared stop flag of the request's session, for a run that starts now."""
        stop = self.event(session_key(request))
        stop.clear()
        return stop

    def stop(self, request: Any | None) -> None:
        """Stop pressed: the session's run ends after its current token, step or segment."""
        self.event(session_key(request)).set()

    @contextmanager
    def running(self, session: str) -> Iterator[None]:
        with self._lock:
            self._running[session] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[session] -= 1
                if self._running[session] <= 0:
                    del self._running[session]
                self._lock.notify_all()

    def busy(self, session: str) -> bool:
        """True while a reply of this session is being written."""
        with self._lock:
            return self._running[session] > 0

    def clears(self, session: str) -> int:
        with self._lock:
            return self._clears[session]

    def clear(self, session: str, timeout: float) -> None:
        """Clear pressed: a reply being written stops, and Clear waits (at most `timeout` seconds) until it has ended,
        so that the reply's last message reaches the page before Clear's own. Replies asked for before this Clear
        and still waiting in the queue will not answer (see `clears`)."""
        with self._lock:
            self._clears[session] += 1
            self._clearing[session] += 1
        try:
            self.event(session).set()
            self.wait_idle(session, timeout)
        finally:
            with self._lock:
                self._clearing[session] -= 1
                if self._clearing[session] <= 0:
                    del self._clearing[session]

    def clearing(self, session: str) -> bool:
        """True while a Clear of this session waits for its reply to end (a message sent now was sent before it)."""
        with self._lock:
            return self._clearing[session] > 0

    def wait_idle(self, session: str, timeout: float) -> bool:
        """True once no reply of this session runs (at most `timeout` seconds)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._running[session], timeout)
