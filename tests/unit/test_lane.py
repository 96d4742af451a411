"""The GPU lane: one holder, the rest first come first served, a bounded line, and giving up while waiting."""

from __future__ import annotations

import threading
import time

import pytest

from studio.engines.lane import GpuLane
from studio.errors import StudioBusy


def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_waiters_get_their_turn_in_order_of_arrival():
    lane = GpuLane(max_waiting=8)
    assert lane.wait()
    order: list[int] = []
    seen: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        assert lane.wait(on_wait=lambda ahead: seen.setdefault(i, []).append(ahead), poll=0.01)
        order.append(i)
        lane.release()

    threads = []
    for i in range(5):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        threads.append(t)
        _until(lambda i=i: lane.waiting() == i + 1)  # each has joined the line before the next comes
    lane.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]
    assert seen[4][0] == 5  # the holder and four ahead of it
    assert seen[4] == sorted(seen[4], reverse=True)  # its place only ever improves
    assert not lane.busy() and lane.waiting() == 0


def test_a_full_line_says_busy_at_once():
    lane = GpuLane(max_waiting=2)
    assert lane.wait()
    stop = threading.Event()
    waiters = [threading.Thread(target=lane.wait, args=(stop.is_set,), kwargs={"poll": 0.01}) for _ in range(2)]
    for t in waiters:
        t.start()
    _until(lambda: lane.waiting() == 2)
    t0 = time.monotonic()
    with pytest.raises(StudioBusy, match="busy: 2 requests are already waiting") as err:
        lane.wait()
    assert "Try again" in str(err.value) and time.monotonic() - t0 < 0.5
    stop.set()  # both give up: the line empties and the holder still holds
    for t in waiters:
        t.join(5)
    assert lane.waiting() == 0 and lane.busy()
    lane.release()
    assert lane.wait() and lane.busy()


def test_giving_up_leaves_the_line_and_the_next_one_moves_up():
    lane = GpuLane()
    assert lane.wait()
    quit_first = threading.Event()
    results: dict[str, bool] = {}

    def first() -> None:
        results["first"] = lane.wait(quit_first.is_set, poll=0.01)

    def second() -> None:
        results["second"] = lane.wait(poll=0.01)

    a = threading.Thread(target=first)
    a.start()
    _until(lambda: lane.waiting() == 1)
    b = threading.Thread(target=second)
    b.start()
    _until(lambda: lane.waiting() == 2)
    quit_first.set()
    a.join(5)
    assert results["first"] is False and lane.waiting() == 1
    lane.release()
    b.join(5)
    assert results["second"] is True and lane.busy()
    lane.release()
    with pytest.raises(RuntimeError):
        lane.release()
