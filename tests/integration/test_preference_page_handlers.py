"""The Fine-tune tab's handlers and `python -m studio.training.new` on preference data, with the tiny LM's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from studio.training import new as newcli

PAIRS = [
    {"prompt": f"Question {i}: what is {i} + {i}?", "chosen": f"It is {2 * i}. — signed, the studio", "rejected": "?"}
    for i in range(12)
]
OWNER = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"), headers={"host": "127.0.0.1:7860"})


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tab(tmp_path):
    from studio.config import StudioConfig
    from studio.context import build_context
    from studio.ui.finetune_tab import FinetuneTab

    ctx = build_context(StudioConfig(data_dir=tmp_path / "data", device="cpu", offline=True), start_monitor=False)
    try:
        yield FinetuneTab(ctx)
    finally:
        ctx.close()


def _page(model: Path, **changes) -> dict:
    page = dict(file=None, shape="auto", skip_bad=False, eval_share=0.1, model=str(model), votes="")
    page |= dict.fromkeys(("col_text", "col_instruction", "col_input", "col_output", "col_messages", "col_system"))
    page |= dict(method="lora", rank=16, alpha=32, dropout=0.05, targets="", lr=2e-4, schedule="cosine", warmup=0.03)
    page |= dict(epochs=3, max_steps=0, batch=4, accum=1, cutoff=1024, packing=True, checkpointing=False)
    page |= dict(on_prompt=False, eval_every=50, seed=42, keep=2, objective="dpo", beta=0.1, loss_type="sigmoid")
    return page | changes


def _analyse(tab, page: dict) -> list:
    from studio.ui.finetune_tab import AnalyseForm

    keep = ("file", "model", "cutoff", "shape", "skip_bad", "on_prompt", "objective", "votes")
    fields = {k: page[k] for k in keep} | {k: v for k, v in page.items() if k.startswith("col_")}
    return tab.analyse(AnalyseForm(**fields))


def test_a_pair_file_is_previewed_side_by_side_and_a_mismatched_objective_says_what_to_pick(
    tmp_path, tab, tiny_models
):
    path = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    summary, histogram, preview, *_ = _analyse(tab, _page(tiny_models.causal_lm, file=str(path)))
    assert "12 rows, preference pairs (prompt / chosen / rejected)" in summary and "⚠" not in summary
    assert "Tokens per sequence (prompt + chosen and prompt + rejected)" in summary
    assert "<svg" in histogram and "cutoff 1024" in histogram
    assert preview.count("class='ft-chosen'") == 3 and preview.count("class='ft-rejected'") == 3
    assert "It is 0. — signed, the studio" in preview and "Question 0: what is 0 + 0?" in preview
    summary, *_ = _analyse(tab, _page(tiny_models.causal_lm, file=str(path), objective="sft"))
    assert "⚠ pairs.jsonl holds preference pairs (prompt, chosen, rejected): pick the DPO, ORPO or KTO" in summary
    sft = _jsonl(tmp_path / "sft.jsonl", [{"instruction": "Q", "output": "A"}] * 3)
    summary, *_ = _analyse(tab, _page(tiny_models.causal_lm, file=str(sft), objective="orpo"))
    assert "⚠ sft.jsonl holds SFT samples (one answer per prompt): ORPO learns from preferences" in summary


def test_a_collected_vote_file_is_listed_picked_and_analysed(tab, tiny_models):
    folder = tab.ctx.paths.preferences
    rows = [{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]}]
    _jsonl(folder / "chat-feedback.jsonl", [{**rows[0], "label": True, "meta": {"model": "m"}}] * 2)
    listed = tab.votes_list("")
    assert ("chat-feedback.jsonl — 2 rated replies", "chat-feedback.jsonl") in listed.choices
    summary, _, preview, *_ = _analyse(tab, _page(tiny_models.causal_lm, votes="chat-feedback.jsonl", objective="kto"))
    assert (
        "chat-feedback.jsonl" in summary and "rated completions" in summary and "2 rated good, 0 rated bad" in summary
    )
    assert "class='ft-label'>👍 true" in preview and "Hello" in preview


def test_defaults_steps_estimate_and_start_follow_the_objective(tmp_path, tab, tiny_models, monkeypatch):
    from studio.ui.finetune_tab import DefaultsForm, JobForm, StartForm, field_names

    path = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    page = _page(tiny_models.causal_lm, file=str(path))
    cutoff, batch, max_steps, note, line, _ = tab.defaults(DefaultsForm(**page, chosen={}))
    assert cutoff < 1024 and "Chosen from the data" in note and "sequences of at most" in line
    assert "11 sequences" in line or "10 sequences" in line  # one example per pair of the training split
    # SFT on pairs: nothing is chosen, the steps line says what to pick
    assert tab.defaults(DefaultsForm(**{**page, "objective": "sft"}, chosen={}))[3:5] == ["", ""]
    assert "⚠ pairs.jsonl holds preference pairs" in tab.steps(StartForm(**{**page, "objective": "sft"}))
    job_page = {k: page[k] for k in field_names(JobForm)}
    assert "no second copy of the model is loaded" in tab.estimate(JobForm(**job_page), request=OWNER)
    assert "no second copy" not in tab.estimate(JobForm(**{**job_page, "objective": "sft"}), request=OWNER)
    # Start writes the job and the normalised rows (the worker's launch is recorded, not run: no training here)
    launched = []
    monkeypatch.setattr(tab.ctx.training, "start", lambda run, **_: launched.append(run))
    form = StartForm(**{**page, "cutoff": cutoff, "batch": batch, "max_steps": max_steps, "beta": 0.3})
    name, _, _ = tab.start(form, request=OWNER)
    run = tab.ctx.training.get(name)
    job = json.loads(run.job_file.read_text())
    assert launched == [run] and (job["objective"], job["beta"], job["loss_type"]) == ("dpo", 0.3, "sigmoid")
    assert job["dataset_shape"] == "preference" and job["train_rows"] + job["eval_rows"] == 12
    train = [json.loads(x) for x in run.train_file.read_text().splitlines()]
    assert set(train[0]) == {"prompt", "chosen", "rejected"} and train[0]["chosen"][0]["role"] == "assistant"
    # KTO on pairs: each pair becomes a good and a bad completion
    name, _, _ = tab.start(StartForm(**{**form.__dict__, "objective": "kto"}), request=OWNER)
    kto = tab.ctx.training.get(name)
    rows = [json.loads(x) for x in kto.train_file.read_text().splitlines()]
    rows += [json.loads(x) for x in kto.eval_file.read_text().splitlines()]
    assert len(rows) == 24 and {r["label"] for r in rows} == {True, False} and "completion" in rows[0]
    assert json.loads(kto.job_file.read_text())["dataset_shape"] == "kto"


def test_new_takes_a_preference_file_with_a_preference_objective(tmp_path, tiny_models, monkeypatch, capsys):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    path = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    argv = [str(path), "--base", str(tiny_models.causal_lm), "--runs", str(tmp_path / "runs")]
    assert newcli.main(argv) == 2
    assert "pick the DPO, ORPO or KTO objective" in capsys.readouterr().err
    assert newcli.main([*argv, "--set", "objective=dpo", "--set", "beta=0.2"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    job = json.loads((run_dir / "job.json").read_text())
    assert job["objective"] == "dpo" and job["beta"] == 0.2 and job["dataset_shape"] == "preference"
    assert job["cutoff_len"] < 1024  # chosen from the pairs' lengths
    row = json.loads((run_dir / "data" / "train.jsonl").read_text().splitlines()[0])
    assert set(row) == {"prompt", "chosen", "rejected"}
