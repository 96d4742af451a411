"""Real runs of the worker (a child process) on the tiny LM: learn, stop, kill -9 and resume, merge, refusals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.config import StudioConfig
from studio.context import build_context
from studio.errors import BudgetError, StudioError
from studio.training.datasets import load_dataset
from studio.training.job import RunDir, TrainJob
from studio.training.runs import RunManager
from tests.managers import cpu_manager

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "assets" / "datasets" / "studio-faq.jsonl"
GIB = 1024**3


def _runs(tmp_path: Path, budget: int = 4 * GIB) -> RunManager:
    manager = cpu_manager(tmp_path, budget)
    return RunManager(manager, tmp_path / "runs")


@pytest.fixture
def runs(tmp_path) -> RunManager:
    return _runs(tmp_path)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(ASSET)


def _job(tiny_models, **overrides) -> TrainJob:
    settings = dict(
        base_model=str(tiny_models.causal_lm),
        base_label="tiny",
        learning_rate=2e-2,
        cutoff_len=256,
        batch_size=2,
        eval_every=5,
        save_every=5,
        warmup_ratio=0.0,
        train_rows=1,
        seed=0,
    )
    return TrainJob(**{**settings, **overrides})


def _steps(run: RunDir) -> list[int]:
    return [m["step"] for m in run.metrics() if "loss" in m]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _peft_logits(base_folder: Path, adapter: Path, ids):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), str(adapter))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_run_learns_reports_and_merges(runs, tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    lines = [f"Row {i}: the quick brown fox jumps over the lazy dog." for i in range(30)]
    (tmp_path / "fox.txt").write_text("\n".join(lines), encoding="utf-8")
    run = runs.create(
        _job(tiny_models, max_steps=25, batch_size=1, scheduler="constant"),
        load_dataset(tmp_path / "fox.txt"),
        eval_fraction=0.2,
    )
    assert json.loads(run.job_file.read_text())["train_rows"] == 24 and run.eval_file.is_file()
    runs.start(run)
    assert runs.manager.reservations()[0][0].owner == f"fine-tune {run.name}"
    assert runs.wait(run, 300) == 0, run.log_file.read_text()[-3000:]
    status = runs.state(run)
    assert status["state"] == "done" and status["step"] == status["total_steps"] > 10
    assert runs.manager.reservations() == []  # the worker's memory is given back to the budget
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3  # down (a tiny random LM cannot go far below ln(vocab))
    assert [m["step"] for m in run.metrics() if "eval_loss" in m][0] == 0  # measured before training
    report = run.report()
    assert report["eval_loss_after"] < report["eval_loss_before"] and report["perplexity_after"] > 1
    assert len(run.checkpoint_steps()) <= 2  # capped
    merged = runs.merge(run)
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    expected = _peft_logits(tiny_models.causal_lm, run.adapter, ids)
    plain = AutoModelForCausalLM.from_pretrained(merged)  # transformers alone, no peft
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-4)


@pytest.mark.parametrize("how", ["stop file", "SIGTERM"])
def test_stop_saves_an_adapter_that_peft_loads(runs, tiny_models, dataset, how):
    run = runs.create(_job(tiny_models, max_steps=100_000, eval_every=0, save_every=0), dataset)
    pid = runs.start(run)
    _wait_for(lambda: len(_steps(run)) >= 3, 120, "three steps")
    if how == "stop file":
        assert runs.stop(run)
    else:
        os.kill(pid, signal.SIGTERM)
    assert runs.wait(run, 120) == 0
    status = runs.state(run)
    assert status["state"] == "stopped" and 3 <= status["step"] < 100_000 and "Resume" in status["message"]
    assert not run.stop_file.exists()
    logits = _peft_logits(tiny_models.causal_lm, run.adapter, __import__("torch").tensor([[1, 2, 3]]))
    assert logits.shape[-1] > 100
    assert run.checkpoint_steps() == [status["step"]]  # so Resume continues from exactly here


def test_kill_9_then_resume_continues_from_the_last_checkpoint(runs, tiny_models, dataset):
    run = runs.create(_job(tiny_models, max_steps=24, eval_every=0, save_every=4), dataset)
    pid = runs.start(run)
    _wait_for(
        lambda: run.checkpoint_steps() and max(_steps(run)) >= run.checkpoint_steps()[-1] + 2, 120, "a checkpoint"
    )
    os.kill(pid, signal.SIGKILL)
    assert runs.wait(run, 30) == -signal.SIGKILL
    assert runs.state(run)["state"] == "interrupted"
    last = run.checkpoint_steps()[-1]
    assert 4 <= last < 24 and max(_steps(run)) > last  # steps after the checkpoint were lost with the process
    runs.start(run)
    assert runs.wait(run, 300) == 0, run.log_file.read_text()[-3000:]
    status = runs.state(run)
    assert status["state"] == "done" and status["step"] == 24
    assert [m["step"] for m in run.metrics() if m.get("event") == "resume"] == [last]
    assert _steps(run) == list(range(1, 25))  # the step count continues: every step once, in order


# A studio in a child process: it starts the run's worker, says its pid, and waits to be killed.
_STUDIO = """
import sys, time
from pathlib import Path
from studio.training.runs import RunManager
from tests.managers import cpu_manager
root, mode, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
runs = RunManager(cpu_manager(root.parent, 4 * 1024**3), root, orphan_training=mode)
print(runs.start(runs.get(name)), flush=True)
time.sleep(600)
"""


def _start_then_kill_the_studio(run: RunDir, mode: str) -> int:
    """Start `run` from a studio process, let it train, kill -9 that studio; the worker's pid."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable, "-c", _STUDIO, str(run.path.parent), mode, run.name]
    studio = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    try:
        pid = int(studio.stdout.readline())
        _wait_for(lambda: len(_steps(run)) >= 2, 120, "two steps")
    finally:
        studio.kill()
        studio.wait(30)
        studio.stdout.close()
    return pid


def _gone(pid: int) -> bool:
    """The process ended (a zombie no init has reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_restarted_studio_re_adopts_a_worker_left_training_and_keeps_one_fine_tune_at_a_time(
    tmp_path, tiny_models, dataset
):
    config = StudioConfig(data_dir=tmp_path / "studio-data", device="cpu", budget_gb=4, open_browser=False)
    assert config.orphan_training == "keep"  # the default: a crash of the studio loses no training
    runs = RunManager(cpu_manager(tmp_path), config.data_dir / "runs")
    run = runs.create(_job(tiny_models, max_steps=100_000, eval_every=0, save_every=0), dataset)
    other = runs.create(_job(tiny_models, max_steps=2), dataset)
    pid = _start_then_kill_the_studio(run, "keep")
    try:
        done = len(_steps(run))
        _wait_for(lambda: len(_steps(run)) >= done + 2, 60, "steps after the studio died")  # trains on, orphaned
        ctx = build_context(config, start_monitor=False)  # the studio started again
        try:
            ((reservation, nbytes),) = ctx.manager.reservations()
            assert reservation.owner == f"fine-tune {run.name}" and reservation.pid == pid
            assert nbytes == runs.estimate(run.job()).total and ctx.manager.accounted_bytes() >= nbytes
            assert ctx.training.is_running(run) and ctx.training.pid(run) == pid
            with pytest.raises(StudioError, match=f"The run {run.name} is still training"):
                ctx.training.start(other)
            assert ctx.training.pid(other) is None and other.status()["state"] == "created"
            assert ctx.training.stop(run)
            assert ctx.training.wait(run, 120) is None  # not its child: no exit code, but waited for
            assert ctx.training.state(run)["state"] == "stopped"
            assert ctx.manager.reservations() == []  # released when the adopted worker ended
            ctx.training.start(other)  # and the next fine-tune may start
            assert ctx.training.wait(other, 120) == 0
        finally:
            ctx.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_worker_whose_studio_died_stops_with_its_adapter_saved_in_stop_mode(tmp_path, tiny_models, dataset):
    runs = _runs(tmp_path)
    run = runs.create(_job(tiny_models, max_steps=100_000, eval_every=0, save_every=0), dataset)
    pid = _start_then_kill_the_studio(run, "stop")
    try:
        _wait_for(lambda: _gone(pid), 60, "the orphaned worker to stop")
        status = run.status()
        assert status["state"] == "stopped" and 2 <= status["step"] < 100_000, status
        assert "The studio that started it ended" in status["message"] and "Resume" in status["message"]
        assert (run.adapter / "adapter_config.json").is_file() and run.checkpoint_steps() == [status["step"]]
        assert RunManager(runs.manager, runs.root).adopt() == []  # nothing left to adopt
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_job_too_big_for_the_budget_is_refused(tmp_path, tiny_models, dataset):
    runs = _runs(tmp_path, budget=64 * 1024**2)
    run = runs.create(_job(tiny_models, batch_size=64, cutoff_len=4096), dataset)
    with pytest.raises(BudgetError, match=r"This job needs .* GB .*does not fit|This job needs"):
        runs.start(run)
    assert runs.manager.reservations() == [] and runs.pid(run) is None
    assert "activations" in runs.plan(run.job()).message and not runs.plan(run.job()).plan.fits


def test_a_full_disk_is_refused(runs, tiny_models, dataset, monkeypatch):
    import shutil as real_shutil

    from studio.training import job as jobmod

    usage = real_shutil.disk_usage("/")
    monkeypatch.setattr(jobmod.shutil, "disk_usage", lambda p: usage._replace(free=50 * 1024**2))
    run = runs.create(_job(tiny_models), dataset)
    with pytest.raises(BudgetError, match="Not enough disk space .* MB is free"):
        runs.start(run)
    assert runs.pid(run) is None and runs.manager.reservations() == []


def test_qlora_unpacked_with_checkpointing_learns_and_saves_a_4bit_trained_adapter(runs, tiny_models, tmp_path):
    """QLoRA (the base in NF4 through bitsandbytes, here on the CPU), no packing (one padded sample a row) and
    gradient checkpointing: the other path through the worker. Loss goes down and the adapter loads with peft on
    the plain base."""
    import torch

    lines = [f"Row {i}: the quick brown fox jumps over the lazy dog." for i in range(24)]
    (tmp_path / "fox.txt").write_text("\n".join(lines), encoding="utf-8")
    job = _job(
        tiny_models, method="qlora", packing=False, gradient_checkpointing=True, max_steps=16, batch_size=2,
        scheduler="constant", eval_every=8, save_every=8,
    )  # fmt: skip
    assert job.load_precision == "nf4"
    run = runs.create(job, load_dataset(tmp_path / "fox.txt"), eval_fraction=0.2)
    runs.start(run)
    assert runs.wait(run, 300) == 0, run.log_file.read_text()[-3000:]
    assert runs.state(run)["state"] == "done"
    from studio.training.lora import load_base

    assert any(type(m).__name__ == "Linear4bit" for m in load_base(job).modules())  # the worker's base is 4-bit
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    assert len(losses) == 16 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    logits = _peft_logits(tiny_models.causal_lm, run.adapter, torch.tensor([[1, 5, 9, 42, 7, 3]]))
    assert torch.isfinite(logits).all()


def test_the_status_returns_to_training_right_after_a_save_or_an_eval(tmp_path, tiny_models):
    """Status writes are throttled while training, but a change of state is always written: "saving" or
    "evaluating" must not stay on screen for the steps that follow (seen in the page with frequent saves)."""
    from studio.training.dist import Dist
    from studio.training.worker import Trainer

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    trainer = Trainer(run, _job(tiny_models), Dist())
    trainer.total, trainer.micro_per_epoch = 100, 10  # as prepare() sets them from the data
    for step, (state, force) in enumerate(
        [("training", False), ("saving", True), ("training", False), ("training", False), ("evaluating", True)]
    ):
        trainer.step = step
        trainer.status(state, force=force)
        trainer.status("training", force=False)
        assert run.status()["state"] == "training", (step, state)
    trainer.step = 7
    trainer.status("training", force=False)  # the same state again within the throttle: not rewritten
    assert run.status()["step"] == 4


def test_lora_target_modules_the_model_lacks_are_named(tmp_path, tiny_models):
    from studio.training.dist import Dist
    from studio.training.worker import Trainer

    (tmp_path / "rows.jsonl").write_text(json.dumps({"instruction": "Hi", "output": "Hello"}) + "\n")
    job = TrainJob(
        base_model=str(tiny_models.causal_lm),
        train_rows=1,
        max_steps=1,
        target_modules=("no_such_proj",),
        offline=True,
    )
    run = _runs(tmp_path).create(job, load_dataset(tmp_path / "rows.jsonl"), eval_fraction=0.0)
    with pytest.raises(StudioError, match="LoRA target modules no_such_proj do not fit this model") as err:
        Trainer(run, run.job(), Dist.from_env()).run_job()
    assert "Leave target modules empty" in err.value.tip
