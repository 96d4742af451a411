"""What the model manager reports: the state and record of each model, the plan for a load, what freeing one gave
back.

Plain frozen dataclasses, so the UI and the API can read them without touching the manager's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from studio.models.estimate import Estimate
from studio.models.specs import ModelSpec
from studio.text import fmt_bytes


class ModelState(str, Enum):
    """Where a model is: unloaded -> loaded <-> parked -> unloaded. The value is what the page shows, and a state
    equals its text ("loaded"), so comparisons read the same either way."""

    LOADED = "loaded"  # on its device, accounted against the budget
    PARKED = "parked in RAM"  # moved to CPU RAM: fast to bring back, holds no device memory
    UNLOADED = "unloaded"  # freed

    def __str__(self) -> str:  # "parked in RAM", not "ModelState.PARKED", in messages and on the page
        return self.value


LOADED, PARKED, UNLOADED = ModelState.LOADED, ModelState.PARKED, ModelState.UNLOADED


@dataclass(frozen=True)
class ModelRecord:
    """What the Models tab shows for one model."""

    key: str
    name: str
    kind: str
    precision: str
    device: str
    state: ModelState
    estimated_bytes: int | None
    measured_bytes: int | None
    accounted_bytes: int
    leases: int
    last_used: float
    load_seconds: float | None
    estimate_method: str
    engine: str = ""  # what runs it, for chat models: "llama.cpp · Q4_1", "transformers · NF4"
    keep_alive: float = 0.0  # idle seconds after which it is parked or unloaded (0 = never)
    keep_alive_default: bool = True  # True when that is the studio's --keep-alive, not a time set for this model


@dataclass(frozen=True)
class Eviction:
    """One model the plan would move off the device."""

    key: str
    name: str
    nbytes: int
    action: str  # "park" or "unload"


@dataclass(frozen=True)
class Plan:
    """What loading `spec` would take: its estimate and what would be evicted to fit it."""

    spec: ModelSpec | None  # None when making room for a reservation or a budget change
    estimate: Estimate
    need: int  # bytes that must be free on the device
    budget: int
    free: int  # budget minus what is accounted now
    evictions: tuple[Eviction, ...]
    fits: bool
    reason: str = ""  # why it does not fit, when it does not
    already_loaded: bool = False
    note: str = ""  # how it will be placed, when it matters: "34 of 40 layers on the GPU; the rest on the CPU ..."

    @property
    def message(self) -> str:
        text = self._message()
        return f"{text} {self.note}" if self.note and not self.already_loaded else text

    def _message(self) -> str:
        """The sentence shown before a load: 'Loading SDXL (6.9 GB) unloads Whisper small (1.9 GB).'"""
        name = self.spec.name if self.spec else "this"
        head = f"Loading {name} ({fmt_bytes(self.need)})"
        if self.already_loaded:
            return f"{name} is already loaded."
        if not self.fits:
            return f"{head} does not fit: {self.reason}"
        if not self.evictions:
            return f"{head} fits in the {fmt_bytes(self.free)} free of the budget."
        parts = []
        for verb in ("unload", "park"):
            names = [f"{e.name} ({fmt_bytes(e.nbytes)})" for e in self.evictions if e.action == verb]
            if names:
                parts.append(f"{'unloads' if verb == 'unload' else 'parks in RAM'} {', '.join(names)}")
        return f"{head} {' and '.join(parts)}."


@dataclass(frozen=True)
class FreeReport:
    """What freeing a model gave back."""

    name: str
    accounted: int  # bytes the manager stopped accounting
    observed: int | None  # bytes the probe saw come back (device or RSS), if it could tell
    leaked: bool  # something outside the manager still holds the model
    referrers: tuple[str, ...] = ()
