"""The real NVML probe and the manager on a real CUDA device. Skipped without CUDA."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def manager(tmp_path):
    from studio.config import StudioConfig
    from studio.context import build_context

    ctx = build_context(StudioConfig(data_dir=tmp_path, device="cuda", budget_gb=4), start_monitor=False)
    yield ctx.manager
    ctx.manager.unload_all()
    ctx.close()


def test_nvml_snapshot_is_consistent():
    from studio.memory.probes import NvmlProbe

    snap = NvmlProbe(0).snapshot()
    assert snap.device_kind == "cuda" and snap.total > 0 and 0 <= snap.used <= snap.total
    assert snap.utilization is not None and snap.temperature is not None


def test_load_measure_and_free_on_cuda(manager, tiny_models):
    from studio.models.specs import ModelSpec

    spec = ModelSpec("chat", str(tiny_models.causal_lm), "folder", precision="fp16", device="cuda")
    with manager.acquire(spec) as lease:
        assert next(lease.model.model.parameters()).device.type == "cuda"
    report = manager.unload(spec.key)
    assert not report.leaked
    assert torch.cuda.memory_allocated() < 1024**2


def test_park_moves_weights_to_cpu_and_back(manager, tiny_models):
    from studio.models.specs import ModelSpec

    spec = ModelSpec("chat", str(tiny_models.causal_lm), "folder", precision="fp16", device="cuda")
    with manager.acquire(spec) as lease:
        before = {k: v.detach().cpu().clone() for k, v in lease.model.model.state_dict().items()}
    manager.park(spec.key)
    with manager.acquire(spec) as lease:
        after = lease.model.model.state_dict()
        assert next(lease.model.model.parameters()).device.type == "cuda"
        assert all(torch.equal(before[k], after[k].cpu()) for k in before)


def test_nf4_load_through_bitsandbytes(manager, tiny_models):
    from studio.models.specs import ModelSpec

    spec = ModelSpec("chat", str(tiny_models.causal_lm), "folder", precision="nf4", device="cuda")
    est = manager.estimate(spec)
    with manager.acquire(spec) as lease:
        out = lease.model.model.generate(torch.tensor([[1, 2, 3]], device="cuda"), max_new_tokens=3)
        assert out.shape[1] >= 4
    rec = next(r for r in manager.records() if r.key == spec.key)
    assert rec.measured_bytes and est.weights_bytes
