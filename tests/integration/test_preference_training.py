"""Real preference runs of the worker (a child process, TRL's trainers): DPO on the starter learns a signature style;
ORPO and KTO on the tiny LM write adapters plain peft loads; stop, kill -9 + resume; bases and rows it refuses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.training.datasets import load_dataset, write_jsonl
from studio.training.job import RunDir, TrainJob, new_run_dir
from studio.training.runs import RunManager
from tests.managers import cpu_manager

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3
SIGNATURE = " — Signed, the Studio."  # how every chosen answer of the shipped sample pairs ends
PAIRS = ROOT / "assets" / "datasets" / "signature-pairs.jsonl"


def _pairs(n: int | None = None) -> list[dict]:
    """The sample pairs (normalised by the studio's own reader), the first `n` of them cycled (all by default)."""
    rows = load_dataset(PAIRS).samples
    return [rows[i % len(rows)] for i in range(n or len(rows))]


def _unpaired(i: int) -> dict:
    good = i % 2 == 0
    answer = f"Answer number {i}." + (SIGNATURE if good else "")
    return {
        "prompt": [{"role": "user", "content": f"Question number {i}?"}],
        "completion": [{"role": "assistant", "content": answer}],
        "label": good,
        "meta": {"model": "tiny", "source": "thumbs"},  # the vote files' extra key: readers drop it
    }


def _make_run(root: Path, base: Path, train: list[dict], evals: list[dict], **settings) -> RunDir:
    """A run folder as the Fine-tune tab writes it, from normalised preference rows made here."""
    defaults = dict(
        base_model=str(base),
        base_label=base.name,
        learning_rate=1e-2,
        scheduler="constant",
        warmup_ratio=0.0,
        batch_size=2,
        cutoff_len=64,
        eval_every=0,
        save_every=0,
        seed=0,
        offline=True,
    )
    job = TrainJob(**{**defaults, **settings, "train_rows": len(train), "eval_rows": len(evals)})
    job.check()
    run = new_run_dir(root, job.base_label)
    write_jsonl(run.train_file, train)
    write_jsonl(run.eval_file, evals)
    run.write_job(job)
    run.write_status(state="created", step=0, total_steps=0, message="Created; not started yet.")
    return run


@pytest.fixture
def runs(tmp_path) -> RunManager:
    return RunManager(cpu_manager(tmp_path, 6 * GIB), tmp_path / "runs")


def _steps(run: RunDir) -> list[int]:
    return [m["step"] for m in run.metrics() if "loss" in m]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _finish(runs: RunManager, run: RunDir, timeout: float = 600) -> dict:
    assert runs.wait(run, timeout) == 0, run.log_file.read_text()[-4000:]
    status = runs.state(run)
    assert status["state"] == "done", status
    return status


def _load_adapter(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()


def _completion_logp(model, tokenizer, prompt: list[dict], answer: list[dict]) -> float:
    """Summed log-probability of the answer's tokens after the prompt, through the chat template."""
    import torch

    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    assert full.startswith(head)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(logps[len(head_ids) - 1 :].sum())


def _preference_margin(model, tokenizer, rows: list[dict]) -> float:
    """Mean log p(chosen) - log p(rejected) over `rows`."""
    gaps = [
        _completion_logp(model, tokenizer, r["prompt"], r["chosen"])
        - _completion_logp(model, tokenizer, r["prompt"], r["rejected"])
        for r in rows
    ]
    return sum(gaps) / len(gaps)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # four DPO steps of the 135M starter on a loaded 2-core CPU take minutes each
def test_dpo_on_the_starter_learns_the_chosen_style(runs, starter_folder):
    from transformers import AutoTokenizer

    rows = _pairs()
    train, held_out = rows[:24], rows[24:]
    run = _make_run(
        runs.root,
        starter_folder,
        train,
        [],
        objective="dpo",
        learning_rate=5e-4,
        max_steps=4,
        batch_size=2,
        cutoff_len=128,
        rank=8,
        alpha=16,
        dropout=0.0,
        beta=0.1,
    )
    started = time.monotonic()
    runs.start(run)
    _finish(runs, run, 2200)
    print(f"DPO on the starter: {time.monotonic() - started:.0f} s for 4 steps and the general probe")
    accuracies = [m["rewards/accuracies"] for m in run.metrics() if "loss" in m]
    assert accuracies[0] < 0.8  # step 1: the policy is the reference, no pair is preferred yet
    assert sum(accuracies[-3:]) / 3 > 0.8, accuracies
    report = run.report()
    assert report["objective"] == "dpo" and report["steps"] == 4 and report["reward_accuracy"] > 0.8
    assert report["reward_margin"] > 0 and report["general_kept"] is not None

    tokenizer = AutoTokenizer.from_pretrained(starter_folder)
    model = _load_adapter(starter_folder, run.adapter)
    tuned = _preference_margin(model, tokenizer, held_out)
    with model.disable_adapter():
        base = _preference_margin(model, tokenizer, held_out)
    assert tuned > base + 1.0, (tuned, base)  # held-out prompts: the adapter prefers the signed answers


def _tiny_pairs(n: int) -> list[dict]:
    return _pairs(n)


@pytest.mark.parametrize(
    ("objective", "rows", "figures"),
    [
        ("orpo", _tiny_pairs, ("rewards/accuracies", "rewards/margins", "log_odds_ratio", "nll_loss")),
        ("kto", lambda n: [_unpaired(i) for i in range(n)], ("rewards/chosen", "rewards/rejected", "kl")),
    ],
)
def test_orpo_and_kto_write_an_adapter_plain_peft_loads(runs, tiny_models, objective, rows, figures):
    import torch

    data = rows(16)
    run = _make_run(runs.root, tiny_models.causal_lm, data[:12], data[12:], objective=objective, max_steps=4)
    runs.start(run)
    status = _finish(runs, run)
    assert status["step"] == status["total_steps"] == 4
    steps = [m for m in run.metrics() if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    for name in figures:
        assert all(isinstance(m.get(name), float) for m in steps), (name, steps[-1])
    assert any("eval_loss" in m for m in run.metrics())
    report = run.report()
    assert report["objective"] == objective and report["steps"] == 4 and report["eval_loss_after"] is not None
    before = _load_adapter(tiny_models.causal_lm, run.adapter)
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 9, 42]])
        tuned = before(input_ids=ids).logits
        with before.disable_adapter():
            plain = before(input_ids=ids).logits
    assert not torch.allclose(tuned, plain)  # the adapter learned something: it changes the outputs


@pytest.mark.parametrize("how", ["stop file", "SIGTERM"])
def test_stop_saves_a_usable_adapter(runs, tiny_models, how):
    run = _make_run(runs.root, tiny_models.causal_lm, _tiny_pairs(12), [], objective="dpo", max_steps=100_000)
    pid = runs.start(run)
    _wait_for(lambda: len(_steps(run)) >= 3, 300, "three steps")
    if how == "stop file":
        assert runs.stop(run)
    else:
        os.kill(pid, signal.SIGTERM)
    assert runs.wait(run, 300) == 0, run.log_file.read_text()[-4000:]
    status = runs.state(run)
    assert status["state"] == "stopped" and 3 <= status["step"] < 100_000 and "Resume" in status["message"]
    assert not run.stop_file.exists()
    assert run.checkpoint_steps() == [status["step"]]  # Resume continues from exactly here
    model = _load_adapter(tiny_models.causal_lm, run.adapter)
    assert model(input_ids=__import__("torch").tensor([[1, 2, 3]])).logits.shape[-1] > 100


def test_kill_9_then_resume_finishes_from_the_last_checkpoint(runs, tiny_models):
    run = _make_run(runs.root, tiny_models.causal_lm, _tiny_pairs(12), [], objective="dpo", max_steps=24, save_every=4)
    pid = runs.start(run)
    _wait_for(
        lambda: run.checkpoint_steps() and max(_steps(run)) >= run.checkpoint_steps()[-1] + 2, 300, "a checkpoint"
    )
    os.kill(pid, signal.SIGKILL)
    assert runs.wait(run, 60) == -signal.SIGKILL
    assert runs.state(run)["state"] == "interrupted"
    kept = run.checkpoint_steps()
    last = kept[-1]
    assert 4 <= last < 24 and max(_steps(run)) > last and len(kept) <= 2  # capped at max_checkpoints
    runs.start(run)
    status = _finish(runs, run)
    assert status["step"] == 24
    assert [m["step"] for m in run.metrics() if m.get("event") == "resume"] == [last]
    assert _steps(run) == list(range(1, 25))  # every step once, in order
    assert len(run.checkpoint_steps()) <= 2 and run.report()["steps"] == 24
    import torch
    from transformers import AutoModelForCausalLM

    merged = runs.merge(run)  # the same PEFT adapter as SFT's: --merge folds it in
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        expected = _load_adapter(tiny_models.causal_lm, run.adapter)(input_ids=ids).logits
        alone = AutoModelForCausalLM.from_pretrained(merged)(input_ids=ids).logits
    assert torch.allclose(alone, expected, atol=1e-4)


def _worker(run: RunDir) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "studio.training.worker", str(run.path)]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=600)


def test_a_base_whose_chat_template_cannot_render_the_prompts_is_refused(tmp_path, tiny_models):
    base = tmp_path / "no-system-base"
    shutil.copytree(tiny_models.causal_lm, base)
    for name in ("chat_template.jinja", "chat_template.json"):
        (base / name).unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ raise_exception('System role not supported') }}"
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    run = _make_run(tmp_path / "runs", base, _tiny_pairs(4), [], objective="dpo", max_steps=2)
    done = _worker(run)
    assert done.returncode == 1, done.stderr[-3000:]
    status = run.status()
    assert status["state"] == "failed"
    assert "chat template cannot render" in status["message"] and "System role not supported" in status["message"]
    assert not run.adapter.exists()


def test_kto_with_a_batch_of_one_and_pairs_for_kto_are_refused(tmp_path, tiny_models):
    one = _make_run(
        tmp_path / "runs", tiny_models.causal_lm, [_unpaired(i) for i in range(4)], [], objective="kto", batch_size=1
    )
    assert _worker(one).returncode == 1
    assert one.status()["state"] == "failed" and "batch size of at least 2" in one.status()["message"]
    pairs = _make_run(tmp_path / "runs", tiny_models.causal_lm, _tiny_pairs(4), [], objective="kto", max_steps=2)
    assert _worker(pairs).returncode == 1
    message = pairs.status()["message"]
    assert "row 1 has no completion, label" in message and "KTO trains on prompt/completion/label rows" in message


def test_a_dpo_adapter_exports_to_gguf_and_llama_cpp_gives_the_tuned_logits(runs, tiny_models, tmp_path):
    """Merge and export take a preference run as they take an SFT one: the merged F16 GGUF gives llama.cpp the
    logits of base + DPO adapter (not the base's), and the GGUF LoRA file is written beside it."""
    import numpy as np
    import torch

    from studio.engines import llamacpp

    if not llamacpp.available():
        pytest.skip(f"llama-cpp-python is missing ({llamacpp.unavailable_reason()})")
    import llama_cpp

    from studio.export import ExportRequest, export

    run = _make_run(runs.root, tiny_models.causal_lm, _tiny_pairs(8), [], objective="dpo", max_steps=4)
    runs.start(run)
    _finish(runs, run)
    merged = export(ExportRequest(str(run.path), "f16", data_dir=tmp_path))
    lora = export(ExportRequest(str(run.path), "lora", data_dir=tmp_path))
    assert merged.path.parent == lora.path.parent == run.path / "export"
    assert merged.modelfile is not None and merged.modelfile.is_file() and lora.path.stat().st_size > 0
    ids = [1, 5, 9, 42, 77, 3]
    tuned = _load_adapter(tiny_models.causal_lm, run.adapter)
    with torch.no_grad():
        want = tuned(input_ids=torch.tensor([ids])).logits[0].numpy()
        with tuned.disable_adapter():
            base = tuned(input_ids=torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(model_path=str(merged.path), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    llm.close()
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() < 5e-3 * scale  # F16 rounding
    assert np.abs(base - want).max() > 50 * np.abs(got - want).max()  # and the adapter's change is far above it
