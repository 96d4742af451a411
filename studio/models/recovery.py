"""Out-of-memory recovery, one ladder for every engine: try; on out of memory give memory back, take the next step
(evict idle models, then each of the engine's degrade steps) and try again; after the last step, a
StudioOutOfMemory that says what was tried and what to do.

The work runs as a series of attempts, so code that streams partial results (chat tokens, speech segments) keeps
its shape:

    for attempt in manager.oom_attempts(spec.name, exclude=spec.key, degrade=[("beam size 1", smaller_beam)]):
        with attempt:
            yield from transcribe_window()

Each attempt catches out-of-memory errors only. Recovery runs between attempts, outside any `except` block: a live
exception pins the tensors of the frame that failed.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence

from studio.errors import StudioError, StudioOutOfMemory, is_oom
from studio.memory.reclaim import empty_device_cache
from studio.memory.timeline import EventLog

OOM_TIP = "Unload other models in the Models tab, lower the size/batch/context, or use 4-bit precision."
EVICT_STEP = "evict idle models"


class Attempt:
    """One try on the ladder. `with attempt:` swallows an out-of-memory error (nothing else, and never a
    StudioError), and the ladder goes on to its next step; when the block ends without one, the ladder ends."""

    def __init__(self, step: str) -> None:
        self.step = step  # the recovery step taken before this try ("" for the first try)
        self.error = ""  # the first line of the out-of-memory error, once this try has failed

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, StudioError) or not is_oom(exc):
            return False
        text = str(exc)
        self.error = text.splitlines()[0][:200] if text else type(exc).__name__
        return True


def oom_ladder(
    name: str,
    *,
    evict: Callable[[], object],
    events: EventLog,
    degrade: Sequence[tuple[str, Callable[[], None]]] = (),
    message: str = "",
    tip: str = OOM_TIP,
) -> Iterator[Attempt]:
    """Attempts at work named `name`: the first as it is, then after `evict()`, then after each (label, action) of
    `degrade`. Every failed attempt is an "oom" event; the last raises StudioOutOfMemory(message, tip), where the
    default message lists the steps tried."""
    steps: list[tuple[str, Callable[[], object] | None]] = [("", None), (EVICT_STEP, evict), *degrade]
    tried: list[str] = []
    for label, action in steps:
        if action is not None:
            action()
        if label:
            tried.append(label)
        attempt = Attempt(label)
        yield attempt
        if not attempt.error:
            return
        gc.collect()  # the failed try's tensors are garbage now: give them back before the next step
        empty_device_cache()
        after = f" after: {', '.join(tried)}" if tried else ""
        events.add("oom", name, 0, f"out of memory in {name}{after} ({attempt.error})")
    raise StudioOutOfMemory(message or f"Out of memory in {name}, even after: {', '.join(tried)}.", tip)
