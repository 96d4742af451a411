"""Blocking work for one request, on a worker thread, told to stop when the client goes away.

The image and audio routes draw or transcribe for a long time without sending anything; a client that gives up
(a timeout, a closed connection) must not leave the GPU lane held by work nobody will read. The work gets a
`should_stop` to check between steps; this polls `request.is_disconnected()` while it runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

import fastapi

DISCONNECT_POLL_S = 0.5  # how often a waiting request checks whether its client is still there

T = TypeVar("T")


async def run_while_connected(
    request: fastapi.Request, work: Callable[[Callable[[], bool]], T], on_leave: Callable[[], None] | None = None
) -> T:
    """`work(should_stop)` on a worker thread; its result. When the client leaves, `should_stop()` turns True,
    `on_leave()` is called once, and this still waits for `work` to end (what it finished is kept)."""
    stop = threading.Event()
    job = asyncio.ensure_future(asyncio.to_thread(work, stop.is_set))
    try:
        while not job.done():
            await asyncio.wait({job}, timeout=DISCONNECT_POLL_S)
            if not job.done() and not stop.is_set() and await request.is_disconnected():
                stop.set()
                if on_leave is not None:
                    on_leave()
    finally:
        stop.set()  # also when this request is cancelled: the thread must not draw on for nobody
    return job.result()
