"""llama.cpp on a real CUDA device: the starter's GGUF offloaded whole and in part, NVML seeing the memory come
and go. Skipped without CUDA or without a CUDA build of llama-cpp-python (scripts/setup.sh builds one when nvcc
and a GPU are there)."""

from __future__ import annotations

import time

import pytest

from studio.engines import llamacpp

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not llamacpp.gpu_offload_supported(), reason="needs llama-cpp-python built with CUDA"),
]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
MIB = 1024**2


@pytest.fixture
def ctx(tmp_path):
    from studio.config import StudioConfig
    from studio.context import build_context

    ctx = build_context(StudioConfig(data_dir=tmp_path, device="cuda", budget_gb=4), start_monitor=False)
    yield ctx
    ctx.manager.unload_all()
    ctx.close()


def _nvml_process_bytes(ctx) -> int:
    return ctx.probe.snapshot().this_process


def test_the_starter_runs_on_the_gpu_and_gives_the_memory_back(ctx):
    from studio.engines.chat import ChatParams
    from studio.models.starter import starter_llamacpp_spec

    spec = starter_llamacpp_spec("cuda")
    before = _nvml_process_bytes(ctx)
    last = ctx.chat.complete(spec, FRANCE, ChatParams(temperature=0, max_new_tokens=40))
    assert "Paris" in last.text and last.stats.tokens_per_s > 0
    loaded = _nvml_process_bytes(ctx)
    assert loaded - before > 80 * MIB  # weights (97 MB) and the KV cache on the device
    ((record, runtime),) = ctx.manager.models("chat")
    with ctx.manager.acquire(runtime) as lease:
        assert lease.model.gpu_layers == -1
    ctx.manager.unload(record.key)
    deadline = time.monotonic() + 5
    while _nvml_process_bytes(ctx) > before + (loaded - before) * 0.3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _nvml_process_bytes(ctx) <= before + (loaded - before) * 0.3


def test_a_partial_offload_puts_the_planned_layers_on_the_gpu(ctx):
    from studio.engines.chat import ChatParams
    from studio.models.starter import starter_llamacpp_spec

    spec = llamacpp.llamacpp_spec(starter_llamacpp_spec("cuda"))
    lay = llamacpp.layout(spec)
    fixed = lay.compute_bytes(4096, False)
    per_layer = lay.per_layer + lay.kv_bytes(4096, "f16", layers=1)
    ctx.manager.set_budget(
        fixed + 10 * per_layer + per_layer // 2 + ctx.manager.reserve_bytes, ctx.manager.reserve_bytes
    )
    plan = ctx.manager.plan(spec)
    assert "10 of 30 layers on the GPU" in plan.message
    last = ctx.chat.complete(spec, FRANCE, ChatParams(temperature=0, max_new_tokens=24))
    assert "Paris" in last.text
    with ctx.manager.acquire(spec) as lease:
        assert lease.model.gpu_layers == 10
