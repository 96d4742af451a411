"""Preference runs on a real CUDA device: DPO on QLoRA (the base in 4-bit NF4 through bitsandbytes, bf16 compute)
and KTO on LoRA at bf16, through the worker and the run folder as the Fine-tune tab starts them. Skipped without
CUDA."""

from __future__ import annotations

import pytest

from tests.integration.test_preference_training import _finish, _make_run, _tiny_pairs, _unpaired

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def ctx(tmp_path):
    from studio.config import StudioConfig
    from studio.context import build_context

    ctx = build_context(StudioConfig(data_dir=tmp_path, device="cuda", budget_gb=8), start_monitor=False)
    yield ctx
    ctx.manager.unload_all()
    ctx.close()


@pytest.mark.parametrize(
    ("objective", "method", "rows", "figures"),
    [
        ("dpo", "qlora", _tiny_pairs, ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")),
        ("kto", "lora", lambda n: [_unpaired(i) for i in range(n)], ("rewards/chosen", "rewards/rejected", "kl")),
    ],
)
def test_a_preference_run_trains_on_the_gpu_and_leaves_an_adapter(ctx, tiny_models, objective, method, rows, figures):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = rows(16)
    run = _make_run(
        ctx.training.root,
        tiny_models.causal_lm,
        data[:12],
        data[12:],
        objective=objective,
        method=method,
        device="cuda",
        precision="bf16",
        max_steps=4,
    )
    ctx.training.start(run)
    status = _finish(ctx.training, run)
    assert status["step"] == 4
    steps = [m for m in run.metrics() if "loss" in m]
    for name in figures:
        assert all(isinstance(m.get(name), float) for m in steps), (name, steps[-1])
    assert run.report()["objective"] == objective
    base = AutoModelForCausalLM.from_pretrained(tiny_models.causal_lm).to("cuda")
    tuned = PeftModel.from_pretrained(base, str(run.adapter)).eval()
    ids = torch.tensor([[1, 5, 9, 42]], device="cuda")
    with torch.no_grad():
        with_adapter = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            plain = tuned(input_ids=ids).logits
    assert not torch.allclose(with_adapter, plain)  # it learned something
