"""Settings chosen from the dataset (studio.training.defaults) and `python -m studio.training.new` + the worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.training import defaults as dflt
from studio.training import new as newcli
from studio.training import rows as rowlib
from studio.training.datasets import load_dataset
from studio.training.job import TrainJob
from studio.training.runs import RunManager
from tests.managers import cpu_manager

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "assets" / "datasets" / "studio-faq.jsonl"
GIB = 1024**3


def test_the_cutoff_is_the_power_of_two_holding_the_99th_percentile():
    lengths = [40] * 90 + [100] * 9 + [5000]  # one outlier past the 99th percentile is truncated, not planned for
    assert dflt.percentile(lengths, 99) == 100
    assert dflt.cutoff_for(lengths, context=8192) == 128
    assert dflt.cutoff_for([128] * 10, context=8192) == 128  # a row of exactly 128 tokens fits in 128
    assert dflt.cutoff_for([129] * 10, context=8192) == 256
    assert dflt.cutoff_for([3, 5, 9], context=8192) == dflt.CUTOFF_FLOOR
    assert dflt.cutoff_for([3000] * 10, context=1024) == 1024  # never past the model's context


def _rows(lengths: list[int]) -> list[rowlib.Row]:
    return [rowlib.Row(list(range(n)), list(range(n))) for n in lengths]


def test_a_small_dataset_gets_dozens_of_steps_and_a_set_value_is_kept():
    job = TrainJob(base_model="m", train_rows=1)  # cutoff 1024, batch 4, 3 epochs: 3 steps for 30 short rows
    rows = _rows([80 + i for i in range(30)])
    assert dflt.run_size(job, dflt.blocks_for(rows, job.cutoff_len, job.packing))[0] == 3
    derived = dflt.derive(job, rows, 8192, fits=lambda j: True)
    steps, tokens = dflt.run_size(derived.job, derived.data)
    assert derived.job.cutoff_len == 128 and derived.job.batch_size == 1 and steps >= 60
    assert tokens == sum(range(80, 110)) * 3  # three epochs of every row (one row per 128-token block)
    assert set(derived.reasons) == {"cutoff_len", "batch_size"}
    assert f"**{steps} optimizer steps** over {tokens:,} tokens" in dflt.steps_line(derived.job, derived.data)
    # five rows: three epochs make 15 steps, so max steps takes over
    few = dflt.derive(job, rows[:5], 8192, fits=lambda j: True)
    assert few.job.max_steps == dflt.TARGET_STEPS and "max_steps" in few.reasons
    # what the user set is not chosen again
    kept = dflt.derive(job, rows, 8192, lambda j: True, ["batch_size", "max_steps"])
    assert kept.job.batch_size == 4 and "batch_size" not in kept.reasons
    line = dflt.steps_line(kept.job, kept.data)
    assert "**24 optimizer steps**" in line and "Fewer than" not in line
    assert "⚠ Fewer than 20 steps" in dflt.steps_line(job, dflt.blocks_for(rows, 1024, True))
    # a batch that does not fit the budget is not chosen
    big = dflt.derive(job, _rows([80] * 400), 8192, fits=lambda j: j.batch_size <= 2)
    assert big.job.batch_size == 2


@pytest.mark.slow
def test_the_sample_gets_enough_steps_and_an_estimate_under_1_gb_on_the_starter(tmp_path, starter_folder):
    runs = RunManager(cpu_manager(tmp_path, 8 * GIB), tmp_path / "runs")
    job = TrainJob(base_model=str(starter_folder), train_rows=1)
    assert runs.estimate(job).total > 5 * GIB  # the fixed defaults: 4 x 1024 tokens of activations (~11 GB)
    tokenizer = rowlib.load_tokenizer(starter_folder, offline=True)
    derived = dflt.choose(runs, job, load_dataset(ASSET).samples, tokenizer, 0.1)
    steps, _ = dflt.run_size(derived.job, derived.data)
    assert steps >= 20, derived
    assert runs.estimate(derived.job).total < 1 * GIB, runs.estimate(derived.job).breakdown()
    assert derived.job.cutoff_len == 128  # the sample's rows are at most 108 tokens


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, STUDIO_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT), STUDIO_OFFLINE="1")


def test_new_makes_a_run_the_worker_trains(tmp_path, tiny_models):
    sets = ["--set", "max_steps=3", "--set", "eval_every=0", "--set", "save_every=0", "--set", "learning_rate=1e-3"]
    made = subprocess.run(
        [sys.executable, "-m", "studio.training.new", str(ASSET), "--base", str(tiny_models.causal_lm)]
        + ["--runs", str(tmp_path / "runs"), *sets],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=ROOT,
        timeout=600,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    run_dir = Path(made.stdout.strip().splitlines()[-1])
    assert run_dir.parent == tmp_path / "runs"
    job = json.loads((run_dir / "job.json").read_text())
    assert job["max_steps"] == 3 and job["learning_rate"] == 1e-3 and job["eval_every"] == 0  # --set wins
    assert job["cutoff_len"] < 1024 and job["batch_size"] == 1  # chosen from the data
    assert job["train_rows"] == 27 and (run_dir / "data" / "train.jsonl").is_file()
    assert "chosen from the data: cutoff" in made.stdout and "3 optimizer steps" in made.stdout

    trained = subprocess.run(
        [sys.executable, "-m", "studio.training.worker", str(run_dir)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=ROOT,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    losses = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert report["steps"] == 3 == len([m for m in losses if "loss" in m])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("colour=red", "--set colour: no such setting."),
        ("rank=big", "--set rank=big: rank must be a whole number."),
        ("learning_rate=fast", "--set learning_rate=fast: learning_rate must be a number."),
        ("packing=maybe", "--set packing=maybe: packing must be true or false."),
        ("rank", "--set 'rank': write it as key=value"),
        ("train_rows=5", "--set train_rows: no such setting."),  # the run folder sets it
    ],
)
def test_bad_sets_are_named(setting, message, capsys):
    assert newcli.main([str(ASSET), "--base", "starter", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_a_value_the_job_refuses_is_named(tmp_path, tiny_models, monkeypatch, capsys):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    argv = [str(ASSET), "--base", str(tiny_models.causal_lm), "--runs", str(tmp_path / "runs"), "--set", "rank=0"]
    assert newcli.main(argv) == 2
    assert "LoRA rank must be between 1 and 1024, not 0." in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no half-made run
    assert newcli.parse_sets(["target_modules=q_proj, v_proj", "packing=off", "epochs=2"]) == {
        "target_modules": ("q_proj", "v_proj"),
        "packing": False,
        "epochs": 2.0,
    }


def test_the_page_chooses_from_a_new_dataset_and_keeps_what_the_user_typed(tmp_path, tiny_models):
    from studio.config import StudioConfig
    from studio.context import build_context
    from studio.ui.finetune_tab import DefaultsForm, FinetuneTab, StartForm
    from studio.ui.finetune_views import AUTO

    ctx = build_context(StudioConfig(data_dir=tmp_path / "data", device="cpu", offline=True), start_monitor=False)
    page = dict(file=str(ASSET), shape=AUTO, skip_bad=False, eval_share=0.1, model=str(tiny_models.causal_lm))
    page |= dict.fromkeys(("col_text", "col_instruction", "col_input", "col_output", "col_messages", "col_system"))
    page |= dict(method="lora", rank=16, alpha=32, dropout=0.05, targets="", lr=2e-4, schedule="cosine", warmup=0.03)
    page |= dict(epochs=3, max_steps=0, batch=4, accum=1, cutoff=1024, packing=True, checkpointing=False)
    page |= dict(on_prompt=False, eval_every=50, seed=42, keep=2)
    tab = FinetuneTab(ctx)
    try:
        cutoff, batch, max_steps, note, line, chosen = tab.defaults(DefaultsForm(**page, chosen={}))
        assert cutoff < 1024 and batch == 1 and "Chosen from the data" in note and "cutoff" in note
        assert line == tab.steps(StartForm(**{**page, "cutoff": cutoff, "batch": batch, "max_steps": max_steps}))
        # another dataset: the chosen values are chosen again, a typed batch is kept
        typed = {**page, "cutoff": cutoff, "batch": 2, "max_steps": max_steps}
        cutoff2, batch2, _, note2, _, chosen2 = tab.defaults(DefaultsForm(**typed, chosen=chosen))
        assert cutoff2 == cutoff and batch2 == 2 and "batch" not in note2 and "batch" not in chosen2
        assert "⚠ Batch size must be at least 1" in tab.steps(StartForm(**{**page, "batch": 0}))
    finally:
        ctx.close()
