"""`accelerate launch --num_processes 2 --cpu -m studio.training.worker RUN_DIR`, as the README writes it: two CPU
processes train the job (accelerate alone would start one and leave the rest to mpirun)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studio.training.datasets import load_dataset, split, write_jsonl
from studio.training.dist import accelerate_cpu_processes
from studio.training.job import RunDir, TrainJob, new_run_dir
from tests.integration.test_training_distributed import _free_port

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "assets" / "datasets" / "studio-faq.jsonl"
ACCELERATE = shutil.which("accelerate")


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed")
def test_accelerate_cpu_launch_runs_two_processes(tmp_path, tiny_models):
    train, evals = split(load_dataset(ASSET).samples, 0.1, 0)
    run: RunDir = new_run_dir(tmp_path / "runs", "accel")
    write_jsonl(run.train_file, train)
    write_jsonl(run.eval_file, evals)
    job = TrainJob(
        base_model=str(tiny_models.causal_lm),
        max_steps=4,
        batch_size=2,
        cutoff_len=256,
        eval_every=4,
        save_every=4,
        train_rows=len(train),
        eval_rows=len(evals),
    )
    run.write_job(job)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [ACCELERATE, "launch", "--num_processes", "2", "--cpu", "--num_cpu_threads_per_process", "1"]
    command += ["--main_process_port", str(_free_port()), "-m", "studio.training.worker", str(run.path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    status = run.status()
    assert status["state"] == "done" and status["world"] == 2 and status["step"] == 4
    assert run.report()["world"] == 2
    starts = [m for m in run.metrics() if m.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["world"] == 2  # two ranks trained; rank 0 wrote the files
    assert run.adapter.is_dir()


@pytest.mark.parametrize(
    ("env", "parent", "expected"),
    [
        ({"ACCELERATE_MIXED_PRECISION": "no"}, ["python", "/x/bin/accelerate", "launch", "--num_processes", "3", "--cpu", "w.py"], 3),
        ({"ACCELERATE_MIXED_PRECISION": "no"}, ["python", "-m", "accelerate.commands.launch", "--num_processes=2", "w.py"], 2),
        ({"ACCELERATE_MIXED_PRECISION": "no"}, ["python", "/x/bin/accelerate", "launch", "--cpu", "w.py"], 1),
        ({"ACCELERATE_MIXED_PRECISION": "no", "RANK": "0"}, ["python", "/x/bin/accelerate", "launch", "--num_processes", "2", "w.py"], 1),
        ({}, ["python", "/x/bin/accelerate", "launch", "--num_processes", "2", "w.py"], 1),
        ({"ACCELERATE_MIXED_PRECISION": "no"}, ["bash", "run.sh", "launch"], 1),
    ],
)  # fmt: skip
def test_how_many_processes_accelerate_asked_for(env, parent, expected):
    assert accelerate_cpu_processes(env, parent) == expected


def test_worker_alone_is_one_process():
    assert accelerate_cpu_processes({}, [sys.executable, "-m", "studio.training.worker", "RUN"]) == 1
