"""The same worker under torchrun with two CPU processes (gloo): DDP trains the job and rank 0 writes the adapter."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from studio.training.datasets import load_dataset, split, write_jsonl
from studio.training.job import RunDir, TrainJob, new_run_dir

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "assets" / "datasets" / "studio-faq.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_run_finishes_and_writes_an_adapter(tmp_path, tiny_models):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train, evals = split(load_dataset(ASSET).samples, 0.1, 0)
    run: RunDir = new_run_dir(tmp_path / "runs", "ddp")
    write_jsonl(run.train_file, train)
    write_jsonl(run.eval_file, evals)
    job = TrainJob(
        base_model=str(tiny_models.causal_lm),
        max_steps=6,
        batch_size=2,
        cutoff_len=256,
        eval_every=3,
        save_every=3,
        train_rows=len(train),
        eval_rows=len(evals),
    )
    run.write_job(job)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    command += ["-m", "studio.training.worker", str(run.path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    status = run.status()
    assert status["state"] == "done" and status["world"] == 2 and status["step"] == 6
    assert run.report()["world"] == 2 and run.report()["eval_loss_after"] is not None
    assert run.checkpoint_steps() == [3]
    starts = [m for m in run.metrics() if m.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["world"] == 2  # only rank 0 writes the files
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models.causal_lm), str(run.adapter))
    assert model.peft_config["default"].r == 16
