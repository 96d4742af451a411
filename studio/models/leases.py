"""What the manager lends: a lease on a loaded model, and a reservation of memory for another process.

Both are context managers that give back what they hold when released; neither holds the manager itself, only the
function that takes the loan back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Lease:
    """A borrowed model. While any lease is open the model is never evicted. Use as a context manager."""

    def __init__(self, key: str, model: Any, on_release: Callable[[str], None]) -> None:
        self.key = key
        self._model = model
        self._on_release = on_release
        self._open = True

    @property
    def model(self) -> Any:
        if not self._open:
            raise RuntimeError("this lease was released; acquire the model again")
        return self._model

    def release(self) -> None:
        if self._open:
            self._open = False
            self._model = None  # drop the borrowed reference so an unload can really free it
            self._on_release(self.key)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lease must not pin a model forever
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


@dataclass
class Reservation:
    """Memory held outside this process (e.g. a fine-tune worker), accounted like a pinned model."""

    owner: str
    nbytes: int
    pid: int | None = None
    created: float = field(default_factory=time.time)
    _on_release: Callable[[Reservation], None] | None = field(default=None, repr=False)

    def attach_pid(self, pid: int) -> None:
        """Attribute real use through the probe's per-process figures (NVML)."""
        self.pid = pid

    def release(self) -> None:
        if self._on_release is not None:
            self._on_release(self)
            self._on_release = None

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
