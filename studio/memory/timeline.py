"""What happened to memory over time: manager events in a ring buffer, and sampled snapshots.

A background `MemoryMonitor` samples the probe about once a second, so the memory bar reads the latest
snapshot without ever calling NVML itself and is never stuck behind a running generation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from studio.memory.probes import MemoryProbe, MemorySnapshot

log = logging.getLogger(__name__)

EVENT_KINDS = ("load", "park", "unpark", "unload", "evict", "oom", "leak", "reserve", "release", "error")


@dataclass(frozen=True)
class MemoryEvent:
    """One thing the manager did, for the timeline and the log."""

    time: float
    kind: str  # one of EVENT_KINDS
    model: str  # the model's display name (or a reservation's owner)
    bytes: int  # bytes moved, freed or reserved
    detail: str = ""  # a sentence for the user


class EventLog:
    """A thread-safe ring buffer of the manager's events."""

    def __init__(self, maxlen: int = 2000) -> None:
        self._events: deque[MemoryEvent] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, kind: str, model: str, nbytes: int = 0, detail: str = "") -> MemoryEvent:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        event = MemoryEvent(time.time(), kind, model, int(nbytes), detail)
        with self._lock:
            self._events.append(event)
        log.info("%s %s %s %s", kind, model, nbytes, detail)
        return event

    def since(self, t0: float = 0.0) -> list[MemoryEvent]:
        with self._lock:
            return [e for e in self._events if e.time >= t0]

    def last(self, n: int = 20) -> list[MemoryEvent]:
        with self._lock:
            return list(self._events)[-n:]


@dataclass(frozen=True)
class Sample:
    """One point of the timeline: device use and what the manager accounts for."""

    time: float
    used: int  # device bytes in use by everyone
    total: int
    accounted: int  # bytes the manager attributes to loaded models and reservations
    budget: int


class MemoryMonitor:
    """Samples the probe in a daemon thread; keeps the latest snapshot and a window of samples."""

    def __init__(
        self,
        probe: MemoryProbe,
        *,
        interval: float = 1.0,
        window_s: float = 600.0,
        accounted=lambda: 0,
        budget=lambda: 0,
    ) -> None:
        self.probe = probe
        self.interval = interval
        self._accounted = accounted
        self._budget = budget
        self._samples: deque[Sample] = deque(maxlen=max(10, int(window_s / interval)))
        self._lock = threading.Lock()
        self._latest: MemorySnapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def bind(self, *, accounted, budget) -> None:
        """Attach the manager's figures (the manager is built after the monitor)."""
        self._accounted, self._budget = accounted, budget

    def sample(self) -> MemorySnapshot:
        """Take one snapshot now and record it."""
        snap = self.probe.snapshot()
        try:
            accounted, budget = int(self._accounted()), int(self._budget())
        except Exception:  # noqa: BLE001 - never let a figure break sampling
            accounted, budget = 0, 0
        with self._lock:
            self._latest = snap
            self._samples.append(Sample(snap.time, snap.used, snap.total, accounted, budget))
        return snap

    def latest(self) -> MemorySnapshot:
        """The newest snapshot (taken now if none yet)."""
        with self._lock:
            snap = self._latest
        return snap if snap is not None else self.sample()

    def samples(self, window_s: float | None = None) -> list[Sample]:
        with self._lock:
            items = list(self._samples)
        if window_s is not None and items:
            t0 = items[-1].time - window_s
            items = [s for s in items if s.time >= t0]
        return items

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="memory-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed probe call must not kill the sampler
                log.exception("memory probe failed")
            self._stop.wait(self.interval)
