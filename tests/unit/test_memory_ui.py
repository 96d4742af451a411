"""The memory bar, the timeline and the budget on a (fake) GPU; the real NVML probe where a driver exists."""

from __future__ import annotations

import time

import pytest

from studio.config import GIB, StudioConfig
from studio.context import build_context
from studio.memory.probes import HostProbe, MemorySnapshot, NvmlProbe, ProcessMemory, detect_probe
from studio.memory.timeline import EventLog, MemoryMonitor
from studio.models.records import LOADED, ModelRecord
from studio.ui import memory_bar, timeline
from tests.fakes import FakeGpuProbe


def _record(name: str, nbytes: int) -> ModelRecord:
    return ModelRecord(
        key=name,
        name=name,
        kind="chat",
        precision="nf4",
        device="cuda",
        state=LOADED,
        estimated_bytes=nbytes,
        measured_bytes=nbytes,
        accounted_bytes=nbytes,
        leases=0,
        last_used=time.time(),
        load_seconds=1.0,
        estimate_method="test",
    )


def test_bar_shows_device_models_and_other_processes():
    probe = FakeGpuProbe(this_process=6 * GIB, others=(ProcessMemory(4242, "Xorg", GIB // 2),))
    snap = probe.snapshot()
    html = memory_bar.render(
        snap,
        [_record("Qwen2.5 7B", 5 * GIB), _record("Whisper small", GIB)],
        budget=10 * GIB,
        accounted=6 * GIB,
        reservations=[("fine-tune run-3", 2 * GIB)],
    )
    assert "NVIDIA GeForce RTX 4070 Ti — 12.0 GB" in html
    assert "used <b>6.5 GB</b> / 12.0 GB" in html
    for text in (
        "Qwen2.5 7B <b>5.0 GB</b>",
        "Whisper small <b>1.0 GB</b>",
        "other processes <b>512 MB</b>",
        "fine-tune run-3 <b>2.0 GB</b>",
        "GPU 37%",
        "61 °C",
    ):
        assert text in html, text
    assert f'data-used="{snap.used}"' in html and f'data-budget="{10 * GIB}"' in html


def test_bar_on_cpu_says_host_ram():
    snap = HostProbe(note="No NVIDIA GPU found").snapshot()
    html = memory_bar.render(snap, [], budget=GIB, accounted=0)
    assert "CPU (host RAM)" in html and "no model loaded" in html and "studio process" in html


def test_budget_subtracts_reserve_and_other_processes(tmp_path):
    probe = FakeGpuProbe(others=(ProcessMemory(4242, "game.exe", 2 * GIB),))
    ctx = build_context(StudioConfig(data_dir=tmp_path, reserve_gb=0.8), probe=probe, start_monitor=False)
    assert ctx.device == "cuda"
    assert ctx.manager.budget_bytes() == 12 * GIB - int(0.8 * GIB) - 2 * GIB
    ctx.manager.set_budget(8 * GIB, int(0.8 * GIB))
    assert ctx.manager.budget_bytes() == 8 * GIB - int(0.8 * GIB) - 2 * GIB
    with pytest.raises(Exception, match="reserve"):
        ctx.manager.set_budget(GIB, 2 * GIB)
    ctx.manager.set_budget(None, 0)  # back to the default
    assert ctx.manager.budget_bytes() == 12 * GIB - 2 * GIB


def test_cpu_flag_never_touches_nvml():
    probe = detect_probe("cpu")
    assert isinstance(probe, HostProbe) and "--device cpu" in probe.note


def test_auto_without_driver_falls_back_with_a_note():
    probe = detect_probe("auto")
    if isinstance(probe, NvmlProbe):
        pytest.skip("an NVIDIA driver is present")
    assert isinstance(probe, HostProbe) and "No NVIDIA GPU" in probe.note
    assert probe.snapshot().device_kind == "cpu"


def test_real_nvml_probe_where_a_driver_exists():
    try:
        probe = NvmlProbe(0)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no NVIDIA driver here ({type(exc).__name__})")
    snap = probe.snapshot()
    assert isinstance(snap, MemorySnapshot) and snap.total > 0 and snap.used <= snap.total
    assert snap.device_kind == "cuda" and snap.device_name


def test_monitor_samples_in_the_background():
    probe = FakeGpuProbe()
    mon = MemoryMonitor(probe, interval=0.05, accounted=lambda: 123, budget=lambda: 456)
    mon.start()
    time.sleep(0.4)
    mon.stop()
    samples = mon.samples()
    assert len(samples) >= 3 and samples[-1].accounted == 123 and samples[-1].budget == 456
    assert mon.latest().device_kind == "cuda"


def test_timeline_marks_events():
    probe = FakeGpuProbe(this_process=GIB)
    mon = MemoryMonitor(probe, accounted=lambda: GIB, budget=lambda: 10 * GIB)
    for _ in range(5):
        mon.sample()
    log = EventLog()
    for kind in ("load", "park", "unload", "evict", "oom"):
        log.add(kind, "model-x", GIB, f"{kind} happened")
    svg = timeline.render(mon.samples(), log.since())
    assert svg.startswith("<svg") and 'data-events="5"' in svg
    for kind in ("load", "park", "unload", "evict", "oom"):
        assert f"ev-{kind}" in svg
    rows = timeline.event_rows(log.since())
    assert rows[0][1] == "oom" and rows[-1][1] == "load"


def test_event_log_is_a_ring_buffer():
    log = EventLog(maxlen=3)
    for i in range(5):
        log.add("load", f"m{i}")
    assert [e.model for e in log.since()] == ["m2", "m3", "m4"]
    with pytest.raises(ValueError):
        log.add("explode", "m")


def test_build_app_with_a_fake_gpu(tmp_path):
    from studio.ui.layout import build_app, render_bar

    ctx = build_context(StudioConfig(data_dir=tmp_path), probe=FakeGpuProbe(this_process=GIB), start_monitor=False)
    app = build_app(ctx)
    assert "memory_bar" in app.studio_components and "models" in app.studio_components
    assert "NVIDIA GeForce RTX 4070 Ti" in render_bar(ctx)
    api = app.get_api_info()
    names = set(api["named_endpoints"]) if "named_endpoints" in api else set(str(api))
    for name in ("/models_load", "/models_unload", "/models_park", "/models_budget", "/models_plan"):
        assert any(name in n for n in names), name
