"""The GPU lane: chat replies, image runs and transcriptions take turns on the device, whoever asks (the page or
the API), first come first served, with a bounded line.

The page's GPU events already wait in Gradio's queue (one `concurrency_id="gpu"`, which shows each visitor their
place and answers "busy, try again" when full); the OpenAI-compatible routes come straight in. This lane is where
both meet: one holder at a time, the others in order of arrival, and a caller that finds the line full is told so
at once (StudioBusy) instead of hanging. A waiter holds no model, so eviction and the memory bar never wait on it.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable

from studio.errors import StudioBusy

DEFAULT_MAX_WAITING = 64  # callers waiting at most (the holder not counted); --max-queue sets it


class GpuLane:
    """A fair (FIFO) lock with a bounded number of waiters and a cooperative give-up."""

    def __init__(self, max_waiting: int = DEFAULT_MAX_WAITING) -> None:
        if max_waiting < 0:
            raise ValueError("max_waiting must be zero or more")
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._line: deque[int] = deque()  # tickets waiting, in order of arrival
        self._holder: int | None = None
        self._tickets = itertools.count()

    def wait(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        *,
        on_wait: Callable[[int], None] | None = None,
        poll: float = 0.25,
    ) -> bool:
        """Block until it is this caller's turn (True), or until `should_stop()` says it no longer wants one
        (False). A full line raises StudioBusy at once. `on_wait(n)` hears how many are ahead when that changes.
        """
        with self._cond:
            if self._holder is None and not self._line:
                self._holder = next(self._tickets)
                return True
            if len(self._line) >= self.max_waiting:
                raise StudioBusy(
                    f"The studio is busy: {len(self._line)} requests are already waiting for the GPU.",
                    "Try again in a moment.",
                )
            ticket = next(self._tickets)
            self._line.append(ticket)
            ahead = -1
            try:
                while self._holder is not None or self._line[0] != ticket:
                    now = self._line.index(ticket) + (self._holder is not None)
                    if on_wait is not None and now != ahead:
                        on_wait(now)
                    ahead = now
                    self._cond.wait(poll)
                    if should_stop():
                        return False
                self._holder = ticket
                return True
            finally:
                if self._holder != ticket:  # gave up: leave the line, and let the next one see it
                    self._line.remove(ticket)
                    self._cond.notify_all()
                else:
                    self._line.popleft()

    def release(self) -> None:
        with self._cond:
            if self._holder is None:
                raise RuntimeError("release() of a GPU lane nobody holds")
            self._holder = None
            self._cond.notify_all()

    def busy(self) -> bool:
        """Someone holds the lane."""
        return self._holder is not None

    def waiting(self) -> int:
        """How many callers wait in line."""
        return len(self._line)
