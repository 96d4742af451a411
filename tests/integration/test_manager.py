"""The model manager on real tiny models, on the CPU, with a small budget."""

from __future__ import annotations

import gc
import threading

import psutil
import pytest
import torch

from studio.errors import BudgetError, StudioOutOfMemory
from studio.models.manager import ModelManager
from studio.models.records import LOADED, PARKED, UNLOADED
from studio.models.specs import ModelSpec
from studio.models.tiny import build_tiny_causal_lm
from tests.managers import cpu_manager

MB = 1024**2


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """Three tiny LMs: small, small, large (about 3x)."""
    root = tmp_path_factory.mktemp("lms")
    small_a = build_tiny_causal_lm(root / "lm-a", seed=1, hidden_size=64)
    small_b = build_tiny_causal_lm(root / "lm-b", seed=2, hidden_size=64)
    large = build_tiny_causal_lm(root / "lm-big", seed=3, hidden_size=192, intermediate_size=384)
    return [ModelSpec("chat", str(p), "folder", label=p.name) for p in (small_a, small_b, large)]


def make_manager(tmp_path, budget: int, **kw) -> ModelManager:
    return cpu_manager(tmp_path, budget, **kw)


def state(m: ModelManager, spec: ModelSpec) -> str:
    return next(r.state for r in m.records() if r.key == spec.key)


def sizes(m: ModelManager, specs) -> list[int]:
    return [m.estimate(s).total for s in specs]


def test_eviction_keeps_accounted_within_budget_and_picks_lru(tmp_path, lms):
    a, b, big = lms
    probe_m = make_manager(tmp_path, 10**9)
    sa, sb, _ = sizes(probe_m, lms)
    m = make_manager(tmp_path, int(sa + sb + 0.2 * sa), park_budget_bytes=0)  # room for two small ones
    for spec in (a, b):
        with m.acquire(spec):
            assert m.accounted_bytes() <= m.budget_bytes()
    with m.acquire(a):  # a is now the most recently used
        pass
    c = ModelSpec("chat", a.source, "folder", precision="bf16", label="lm-a bf16")  # a third, different model
    with m.acquire(c):
        assert m.accounted_bytes() <= m.budget_bytes()
    assert state(m, a) == LOADED and state(m, b) == UNLOADED and state(m, c) == LOADED
    kinds = [e.kind for e in m.events.since()]
    assert kinds.count("load") == 3 and "evict" in kinds


def test_size_aware_before_lru(tmp_path, lms):
    a, b, big = lms
    sa, sb, sbig = sizes(make_manager(tmp_path, 10**9), lms)
    m = make_manager(tmp_path, int(sa + sbig + 0.2 * sa), park_budget_bytes=0)
    with m.acquire(a):
        pass
    with m.acquire(big):
        pass
    # a is the least recently used, but a alone cannot make room for a second big model; big alone can.
    big2 = ModelSpec("chat", big.source, "folder", precision="bf16", label="big bf16")
    need = m.estimate(big2).total
    assert need > sa
    with m.acquire(big2):
        assert m.accounted_bytes() <= m.budget_bytes()
    assert state(m, big) == UNLOADED, "the model that alone frees enough goes first"
    assert state(m, a) == LOADED, "even though the small one was used less recently"


def test_accounted_never_exceeds_budget_over_many_steps(tmp_path, lms):
    sa, sb, sbig = sizes(make_manager(tmp_path, 10**9), lms)
    m = make_manager(tmp_path, int(sbig + sa * 1.5))
    order = [0, 1, 2, 0, 2, 1, 1, 0, 2, 2, 0]
    for i in order:
        with m.acquire(lms[i]):
            assert m.accounted_bytes() <= m.budget_bytes()
        assert m.accounted_bytes() <= m.budget_bytes()


def test_leased_model_is_never_evicted_while_another_thread_loads(tmp_path, lms):
    a, b, big = lms
    sa, sb, sbig = sizes(make_manager(tmp_path, 10**9), lms)
    m = make_manager(tmp_path, int(sa + sb + 0.3 * sa), park_budget_bytes=0)
    lease_a = m.acquire(a)
    model_a = lease_a.model.model
    results: dict[str, object] = {}

    def load_b_then_big():
        try:
            with m.acquire(b):
                results["b"] = state(m, a)
            with m.acquire(big):  # does not fit next to the leased a: refused, a untouched
                results["big"] = "loaded"
        except BudgetError as exc:
            results["big"] = str(exc)

    t = threading.Thread(target=load_b_then_big)
    t.start()
    t.join(120)
    assert results["b"] == LOADED
    assert "in use" in str(results["big"]) or "does not fit" in str(results["big"]) or "budget" in str(results["big"])
    assert state(m, a) == LOADED and lease_a.model.model is model_a
    out = lease_a.model.model(torch.tensor([[1, 2, 3]])).logits  # still usable
    assert out.shape[-1] > 0
    lease_a.release()
    with pytest.raises(BudgetError, match="in use"):
        pass_lease = m.acquire(a)
        m.unload(a.key)  # a model with an open lease cannot be unloaded
    pass_lease.release()
    del model_a, out  # this test's own references to the module (the manager's leak check watches it too)
    assert not m.unload(a.key).leaked  # released: now it can go


def test_park_and_reacquire_returns_the_same_weights(tmp_path, lms):
    a = lms[0]
    m = make_manager(tmp_path, 10**9)
    with m.acquire(a) as lease:
        before = {k: v.clone() for k, v in lease.model.model.state_dict().items()}
        obj = lease.model
    accounted = m.accounted_bytes()
    m.park(a.key)
    assert state(m, a) == PARKED and m.accounted_bytes() == 0 and m.parked_bytes() > 0 and accounted > 0
    with m.acquire(a) as lease:
        assert lease.model is obj
        after = lease.model.model.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    kinds = [e.kind for e in m.events.since()]
    assert "park" in kinds and "unpark" in kinds
    del obj


def test_eviction_parks_when_ram_allows(tmp_path, lms):
    a, b, _ = lms
    sa, sb, _ = sizes(make_manager(tmp_path, 10**9), lms)
    m = make_manager(tmp_path, int(sa + 0.5 * sb))
    with m.acquire(a):
        pass
    plan = m.plan(b)
    assert plan.fits and [e.action for e in plan.evictions] == ["park"]
    assert plan.message.startswith("Loading lm-b (") and "parks in RAM lm-a (" in plan.message
    with m.acquire(b):
        pass
    assert state(m, a) == PARKED and state(m, b) == LOADED


def test_retained_reference_is_reported_as_a_leak(tmp_path, lms):
    m = make_manager(tmp_path, 10**9)
    with m.acquire(lms[0]) as lease:
        keep = lease.model  # deliberately kept past the lease
    report = m.unload(lms[0].key)
    assert report.leaked
    leaks = [e for e in m.events.since() if e.kind == "leak"]
    assert leaks and "lm-a" in leaks[0].detail
    del keep
    with m.acquire(lms[0]):
        pass
    assert not m.unload(lms[0].key).leaked


def test_estimates_within_15_percent_of_measured(tmp_path, lms):
    m = make_manager(tmp_path, 10**9)
    for spec in lms:
        est = m.estimate(spec)
        with m.acquire(spec):
            pass
        rec = next(r for r in m.records() if r.key == spec.key)
        assert abs(est.weights_bytes - rec.measured_bytes) <= 0.15 * rec.measured_bytes, (spec.name, est, rec)


def test_calibration_is_used_next_time(tmp_path, lms):
    m = make_manager(tmp_path, 10**9)
    with m.acquire(lms[2]):
        pass
    measured = m.records()[0].measured_bytes
    fresh = make_manager(tmp_path, 10**9)  # same calibration file
    est = fresh.estimate(lms[2])
    assert est.weights_bytes == measured and "calibrated" in est.method
    fresh.calibration.record_peak(lms[2].key, "default", measured + 5 * MB)
    assert fresh.calibration.peak(lms[2].key, "default") == measured + 5 * MB


def test_too_big_even_alone_says_what_to_do(tmp_path, lms):
    m = make_manager(tmp_path, 64 * 1024)
    with pytest.raises(BudgetError) as info:
        m.acquire(lms[2])
    assert "nf4" in str(info.value) and "budget" in str(info.value)
    assert m.accounted_bytes() == 0


def test_twenty_load_unload_cycles_keep_rss_flat(tmp_path, lms):
    m = make_manager(tmp_path, 10**9)
    spec = lms[2]

    def cycle():
        with m.acquire(spec) as lease:
            lease.model.model(torch.tensor([[1, 2, 3, 4]]))
        m.unload(spec.key)

    for _ in range(3):  # warm-up: imports, allocator pools
        cycle()
    gc.collect()
    start = psutil.Process().memory_info().rss
    for _ in range(20):
        cycle()
    gc.collect()
    end = psutil.Process().memory_info().rss
    assert end <= start * 1.10, (start / MB, end / MB)
    assert not any(e.kind == "leak" for e in m.events.since())


def test_reservation_evicts_idle_models_and_is_accounted(tmp_path, lms):
    sa, sb, _ = sizes(make_manager(tmp_path, 10**9), lms)
    m = make_manager(tmp_path, int(sa + sb), park_budget_bytes=0)
    with m.acquire(lms[0]):
        pass
    with m.reserve("fine-tune run-1", int(sb + 0.5 * sa)) as r:
        assert state(m, lms[0]) == UNLOADED
        assert m.accounted_bytes() == r.nbytes
        assert [owner for owner, _ in [(x.owner, n) for x, n in m.reservations()]] == ["fine-tune run-1"]
        with pytest.raises(BudgetError):
            m.acquire(lms[1])
    assert m.accounted_bytes() == 0
    kinds = [e.kind for e in m.events.since()]
    assert "reserve" in kinds and "release" in kinds


def test_oom_recovery_evicts_idle_then_retries(tmp_path, lms):
    m = make_manager(tmp_path, 10**9)
    with m.acquire(lms[0]):
        pass
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "ok"

    assert m.run_with_recovery(flaky, name="test engine") == "ok"
    assert state(m, lms[0]) != LOADED  # evicted to make room
    assert [e.kind for e in m.events.since()].count("oom") == 1


def test_oom_degrades_then_gives_a_clear_error(tmp_path):
    m = make_manager(tmp_path, 10**9)
    steps = []

    def always():
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(StudioOutOfMemory) as info:
        m.run_with_recovery(
            always,
            name="image generation",
            degrade=[("VAE tiling", lambda: steps.append("tiling")), ("batch 1", lambda: steps.append("batch"))],
        )
    assert steps == ["tiling", "batch"]
    assert "VAE tiling" in str(info.value) and "Unload" in str(info.value)


def test_other_errors_are_not_swallowed(tmp_path):
    m = make_manager(tmp_path, 10**9)
    with pytest.raises(ValueError):
        m.run_with_recovery(lambda: (_ for _ in ()).throw(ValueError("bad")), name="x")


def test_measured_peak_calibrates_the_next_estimate(tmp_path, lms):
    from studio.models.estimate import Workload

    m = make_manager(tmp_path, 10**9)
    spec, work = lms[2], Workload(context_len=256)
    with m.acquire(spec, work) as lease, m.track_peak(spec, work):
        ids = torch.randint(0, 100, (4, 256))
        lease.model.model(ids)  # a batch of 4 x 256 tokens: activations well above the weights
    est = m.estimate(spec, work)
    assert est.method == "measured peak (calibrated)"
    assert est.total == m.calibration.peak(spec.key, work.key) > est.weights_bytes


def test_a_larger_workload_makes_room_for_its_runtime(tmp_path, lms):
    from studio.models.estimate import Workload

    a, b, _ = lms
    m = make_manager(tmp_path, 10**9, park_budget_bytes=0)
    small, large = Workload(context_len=16), Workload(context_len=512, batch=8)
    with m.acquire(a, small):
        pass
    before = m.accounted_bytes()
    with m.acquire(a, large):
        assert m.accounted_bytes() - before == m.estimate(a, large).runtime_bytes - m.estimate(a, small).runtime_bytes
        assert m.accounted_bytes() <= m.budget_bytes()


def test_loader_errors_are_specific(tmp_path, tiny_models):
    from studio.errors import ModelLoadError

    m = make_manager(tmp_path, 10**9)
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{}")
    for spec, needle in [
        (ModelSpec("chat", str(tmp_path / "missing"), "folder"), "no such file or folder"),
        (ModelSpec("chat", str(not_a_model), "folder"), "No .safetensors"),
        (ModelSpec("chat", str(tiny_models.causal_lm), "folder", device="cuda"), "CUDA"),
    ]:
        with pytest.raises(ModelLoadError, match=needle):
            with m.acquire(spec):
                pass
    assert m.accounted_bytes() == 0
    with m.acquire(ModelSpec("chat", str(tiny_models.causal_lm), "folder")):  # and the manager still works
        pass


def test_tiny_image_and_speech_models_load_through_the_manager(tmp_path, tiny_models):
    m = make_manager(tmp_path, 10**9)
    for spec in (
        ModelSpec("image", str(tiny_models.sd_pipeline), "folder"),
        ModelSpec("speech", str(tiny_models.whisper_pt), "file"),
    ):
        est = m.estimate(spec)
        with m.acquire(spec) as lease:
            assert lease.model is not None
        rec = next(r for r in m.records() if r.key == spec.key)
        assert abs(est.weights_bytes - rec.measured_bytes) <= 0.15 * rec.measured_bytes
        m.park(spec.key)
        assert not m.unload(spec.key).leaked


def test_lowering_the_budget_evicts_idle_models_but_never_leased_ones(tmp_path, lms):
    a, b, _ = lms
    m = make_manager(tmp_path, 10**9, park_budget_bytes=0)
    sa = m.estimate(a).total
    with m.acquire(b):
        pass
    with m.acquire(a):
        reports = m.set_budget(int(sa * 1.2), 0)  # a is leased: b goes
        assert [r.name for r in reports] == ["lm-b"] and state(m, a) == LOADED
        with pytest.raises(BudgetError, match="in use"):
            m.set_budget(int(sa * 0.5), 0)  # a cannot go while leased: refused, budget unchanged
    assert m.configured_budget == int(sa * 1.2)
