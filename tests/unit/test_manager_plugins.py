"""The manager's CUDA-side logic against a fake NVML probe, with a kind plugged in through the generic loader."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from studio.memory.probes import GIB, ProcessMemory
from studio.memory.timeline import EventLog
from studio.models.calibration import Calibration
from studio.models.estimate import Estimate, Workload
from studio.models.kinds import KindRegistry, ModelKind
from studio.models.manager import ModelManager
from studio.models.records import LOADED
from studio.models.specs import ModelSpec
from tests.fakes import FakeGpuProbe

MB = 1024**2


class LaggingGpu(FakeGpuProbe):
    """Device memory that comes back a little after a free, as a real driver reports it."""

    def __init__(self) -> None:
        super().__init__(others=(ProcessMemory(777, "trainer", 0),))
        self.lock = threading.Lock()

    def hold(self, nbytes: int) -> None:
        with self.lock:
            self.this_process += nbytes

    def release_later(self, nbytes: int, delay: float) -> None:
        def later():
            time.sleep(delay)
            with self.lock:
                self.this_process -= nbytes

        threading.Thread(target=later, daemon=True).start()


def make(probe: LaggingGpu, tmp_path, budget=4 * GIB, loads=None) -> ModelManager:
    sizes = {"a": GIB, "b": GIB, "c": 2 * GIB}

    def load(spec: ModelSpec, opts):
        probe.hold(sizes[spec.source])
        if loads is not None:
            loads.append(spec.source)
        return torch.nn.Linear(4, 4)

    def estimate(spec: ModelSpec, workload: Workload) -> Estimate:
        return Estimate(sizes[spec.source], 0, 0, "test sizes")

    def measure(model, spec):
        return sizes[spec.source]

    def move(model, device):
        if device == "cpu":
            probe.release_later(sizes["a"], 0.0)
        return model

    kinds = KindRegistry()
    kinds.register(ModelKind("chat", load, estimate=estimate, measure=measure, move=move))
    return ModelManager(
        probe=probe,
        kinds=kinds,
        calibration=Calibration(tmp_path / "c.json"),
        events=EventLog(),
        device="cuda",
        budget_bytes=budget,
        reserve_bytes=0,
        park_budget_bytes=0,
        release_timeout=3.0,
    )


def spec(name: str) -> ModelSpec:
    return ModelSpec("chat", name, "hub", device="cuda", label=f"model {name}")


def test_free_waits_until_nvml_shows_the_memory_back(tmp_path):
    probe = LaggingGpu()
    m = make(probe, tmp_path)
    with m.acquire(spec("a")):
        pass
    probe.release_later(GIB, 0.5)  # the driver reports the memory back half a second after the free
    t0 = time.perf_counter()
    report = m.unload(spec("a").key)
    waited = time.perf_counter() - t0
    assert report.observed == GIB and waited >= 0.4 and not report.leaked
    assert "1.0 GB came back" in m.events.last(1)[0].detail


def test_other_processes_and_reservations_shrink_the_budget(tmp_path):
    probe = LaggingGpu()
    m = make(probe, tmp_path, budget=8 * GIB)
    assert m.budget_bytes() == 8 * GIB
    probe.others = (ProcessMemory(777, "trainer", 3 * GIB),)
    assert m.budget_bytes() == 5 * GIB  # an unknown process holds 3 GB
    r = m.reserve("fine-tune", 2 * GIB, pid=777)
    assert m.budget_bytes() == 8 * GIB  # now attributed to the reservation instead...
    assert m.accounted_bytes() == 3 * GIB  # ...which accounts what NVML says it really uses (more than reserved)
    r.release()
    assert m.accounted_bytes() == 0


def test_concurrent_acquires_load_a_model_once(tmp_path):
    probe = LaggingGpu()
    loads: list[str] = []
    m = make(probe, tmp_path, loads=loads)
    leases = []

    def worker():
        leases.append(m.acquire(spec("c")))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert loads == ["c"] and len(leases) == 6
    assert m.records()[0].leases == 6 and m.records()[0].state == LOADED
    for lease in leases:
        lease.release()
    assert m.records()[0].leases == 0


def test_records_never_wait_for_a_load(tmp_path):
    probe = LaggingGpu()
    gate = threading.Event()
    m = make(probe, tmp_path)
    slow = m.kinds.get("chat")

    def slow_load(s, opts):
        gate.wait(10)
        return slow.load(s, opts)

    m.kinds.register(ModelKind("chat", slow_load, estimate=slow.estimate, measure=slow.measure, move=slow.move))
    t = threading.Thread(target=lambda: m.acquire(spec("a")).release())
    t.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    m.records(), m.accounted_bytes(), m.budget_bytes()
    assert time.perf_counter() - t0 < 0.5  # the memory bar's figures come while the load is still running
    gate.set()
    t.join(10)


def test_unknown_kind_is_a_clear_error(tmp_path):
    m = make(LaggingGpu(), tmp_path)
    with pytest.raises(Exception, match="No loader for models of kind 'image'"):
        m.acquire(ModelSpec("image", "x", "hub", device="cuda"))
