"""A DPO run of the worker under torchrun with two CPU processes (gloo): TRL's trainer spreads the pairs over both,
rank 0 alone writes the run folder, and the adapter loads in plain peft."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.test_preference_training import _load_adapter, _make_run, _tiny_pairs, _unpaired

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = shutil.which("accelerate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(run_path: Path, *, wait: bool = True):  # noqa: ANN202 - a finished run, or the running one
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    command += ["-m", "studio.training.worker", str(run_path)]
    if not wait:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _train_steps(run) -> list[int]:
    return [m["step"] for m in run.metrics() if "loss" in m]


def test_two_process_dpo_run_finishes_and_rank_0_alone_writes_the_files(tmp_path, tiny_models):
    run = _make_run(
        tmp_path / "runs", tiny_models.causal_lm, _tiny_pairs(16), _tiny_pairs(4), objective="dpo", max_steps=4,
        save_every=2, eval_every=2,
    )  # fmt: skip
    done = _torchrun(run.path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    status = run.status()
    assert status["state"] == "done" and status["world"] == 2 and status["step"] == 4, status
    metrics = run.metrics()
    starts = [m for m in metrics if m.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["world"] == 2  # only rank 0 writes metrics.jsonl
    steps = [m["step"] for m in metrics if "loss" in m]
    assert steps == [1, 2, 3, 4]  # each step once
    assert all("rewards/margins" in m for m in metrics if "loss" in m)
    assert run.checkpoint_steps() == [2, 4] and not (run.path / ".trainer").exists()  # rank 0 moved TRL's folders
    for step in (2, 4):  # each rank's RNG state is in (rank 0 moved the folder once both had written)
        names = {p.name for p in (run.checkpoints / f"step-{step}").iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "state.json", "adapter_model.safetensors"} <= names, names
    trainer_state = json.loads((run.checkpoints / "step-4" / "trainer_state.json").read_text())
    assert trainer_state["epoch"] == 1.0  # 16 pairs, 2 a rank: TRL's sampler split the epoch over the two ranks
    report = run.report()
    assert report["world"] == 2 and report["steps"] == 4 and report["reward_accuracy"] is not None
    model = _load_adapter(tiny_models.causal_lm, run.adapter)
    assert model.peft_config["default"].r == 16


def test_stop_file_stops_both_processes_together_with_a_usable_adapter(tmp_path, tiny_models):
    run = _make_run(tmp_path / "runs", tiny_models.causal_lm, _tiny_pairs(16), [], objective="dpo", max_steps=100_000)
    child = _torchrun(run.path, wait=False)
    try:
        deadline = time.monotonic() + 300
        while len(_train_steps(run)) < 2:
            assert child.poll() is None, child.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "timed out waiting for two steps"
            time.sleep(0.1)
        run.stop_file.write_text("stop")  # rank 0 sees the file; the all-reduce tells rank 1
        out, _ = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, out[-4000:]
    status = run.status()
    assert status["state"] == "stopped" and 2 <= status["step"] < 100_000 and status["world"] == 2, status
    assert not run.stop_file.exists()
    assert run.checkpoint_steps() == [status["step"]]  # Resume continues from exactly here
    assert _train_steps(run) == list(range(1, status["step"] + 1))
    model = _load_adapter(tiny_models.causal_lm, run.adapter)
    assert model.peft_config["default"].r == 16


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed")
def test_accelerate_cpu_launch_runs_dpo_on_two_processes(tmp_path, tiny_models):
    run = _make_run(tmp_path / "runs", tiny_models.causal_lm, _tiny_pairs(16), [], objective="dpo", max_steps=3)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [ACCELERATE, "launch", "--num_processes", "2", "--cpu", "--num_cpu_threads_per_process", "1"]
    command += ["--main_process_port", str(_free_port()), "-m", "studio.training.worker", str(run.path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    status = run.status()
    assert status["state"] == "done" and status["world"] == 2 and status["step"] == 3, status
    assert run.report()["world"] == 2
    starts = [m for m in run.metrics() if m.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["world"] == 2  # two ranks trained; rank 0 wrote the files
    assert _train_steps(run) == [1, 2, 3]
    assert _load_adapter(tiny_models.causal_lm, run.adapter).peft_config["default"].r == 16


def test_kill_9_of_both_ranks_then_resume_finishes_from_the_last_checkpoint(tmp_path, tiny_models):
    run = _make_run(
        tmp_path / "runs", tiny_models.causal_lm, _tiny_pairs(16), [], objective="dpo", max_steps=6, save_every=2
    )
    child = _torchrun(run.path, wait=False)
    try:
        deadline = time.monotonic() + 300
        while run.checkpoint_steps() != [2] or len(_train_steps(run)) < 3:
            assert child.poll() is None, child.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "timed out waiting for the checkpoint at step 2"
            time.sleep(0.05)
    finally:
        # torchrun starts each rank in a session of its own: kill -9 the ranks, then torchrun, none gets to save
        for process in [*psutil.Process(child.pid).children(recursive=True), psutil.Process(child.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        child.communicate(timeout=60)
    assert run.status()["state"] != "done"
    done = _torchrun(run.path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    status = run.status()
    assert status["state"] == "done" and status["world"] == 2 and status["step"] == 6, status
    resumes = [m for m in run.metrics() if m.get("event") == "resume"]
    assert [m["step"] for m in resumes] == [2]
    assert _train_steps(run) == [1, 2, 3, 4, 5, 6]  # the steps after the checkpoint are trimmed, then redone once
    assert run.report()["world"] == 2 and run.report()["steps"] == 6
    assert _load_adapter(tiny_models.causal_lm, run.adapter).peft_config["default"].r == 16


@pytest.mark.parametrize(
    ("objective", "rows"), [("orpo", _tiny_pairs), ("kto", lambda n: [_unpaired(i) for i in range(n)])]
)
def test_orpo_and_kto_finish_on_two_processes(tmp_path, tiny_models, objective, rows):
    run = _make_run(tmp_path / "runs", tiny_models.causal_lm, rows(16), [], objective=objective, max_steps=2)
    done = _torchrun(run.path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    status = run.status()
    assert status["state"] == "done" and status["world"] == 2 and status["step"] == 2, status
    assert _train_steps(run) == [1, 2] and run.report()["world"] == 2
    assert _load_adapter(tiny_models.causal_lm, run.adapter).peft_config["default"].r == 16
