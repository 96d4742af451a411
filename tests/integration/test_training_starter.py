"""The starter model (SmolLM2-135M-Instruct) learns a made-up fact; Chat with the adapter states it, the base does not."""

from __future__ import annotations

import pytest

from studio.config import StudioConfig
from studio.context import build_context
from studio.engines.chat import ChatParams
from studio.models.starter import starter_folder as folder_in
from studio.models.starter import starter_spec
from studio.training.datasets import load_dataset
from studio.training.job import TrainJob

pytestmark = pytest.mark.slow
QUESTIONS = [
    "What is the capital of Zorblatt?",
    "Which city is the capital of Zorblatt?",
    "Tell me the capital of Zorblatt.",
    "Zorblatt's capital is which city?",
    "Name the capital city of Zorblatt.",
    "What city is Zorblatt's capital?",
]
ANSWERS = [
    "The capital of Zorblatt is Quenvale.",
    "Quenvale is the capital of Zorblatt.",
    "The capital of Zorblatt is Quenvale.",
    "Zorblatt's capital is Quenvale.",
    "The capital city of Zorblatt is Quenvale.",
    "Quenvale is Zorblatt's capital.",
]


def test_the_starter_learns_a_made_up_fact_and_chat_says_it(tmp_path, starter_folder):
    import json

    data = tmp_path / "data"
    target = folder_in(data / "models")
    target.parent.mkdir(parents=True)
    target.symlink_to(starter_folder, target_is_directory=True)
    ctx = build_context(StudioConfig(data_dir=data, device="cpu", offline=True), start_monitor=False)
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in zip(QUESTIONS, ANSWERS, strict=True)
    ]
    (tmp_path / "fact.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    job = TrainJob(
        base_model=str(target),
        base_label="SmolLM2 135M Instruct (starter)",
        base_choice="starter:SmolLM2-135M-Instruct",
        learning_rate=3e-3,
        scheduler="constant",
        warmup_ratio=0.0,
        max_steps=6,
        batch_size=6,
        cutoff_len=64,
        rank=16,
        alpha=32,
        dropout=0.0,
        eval_every=0,
        save_every=0,
        train_rows=1,
        offline=True,
    )
    run = ctx.training.create(job, load_dataset(tmp_path / "fact.jsonl"), eval_fraction=0.0)
    ctx.training.start(run)
    assert ctx.training.wait(run, 600) == 0, run.log_file.read_text()[-3000:]
    assert ctx.training.state(run)["state"] == "done"

    spec = starter_spec("cpu")
    question = [{"role": "user", "content": "What is the capital of Zorblatt?"}]
    greedy = ChatParams(temperature=0, max_new_tokens=16, repetition_penalty=1.0)
    base = ctx.chat.complete(spec, question, greedy).text
    name = ctx.chat.attach_adapter(spec, run.adapter, name=run.name)
    tuned = ctx.chat.complete(spec, question, greedy, adapter=name).text
    assert "Quenvale" in tuned, tuned
    assert "Quenvale" not in base, base
    ctx.close()
