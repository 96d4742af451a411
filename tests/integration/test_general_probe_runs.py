"""The general probe after real runs of the tiny LM: a run that drills a made-up city into every answer is
flagged (general_kept below the warning line); a gentle run is not. Both write general_kept in [0, 1].

The worker's Trainer runs in this process (the code `python -m studio.training.worker RUN_DIR` runs, without a
second interpreter importing torch again: the shared 2-core machine spends most of a child's time on imports);
tests/integration/test_training_runs.py covers the child process itself."""

from __future__ import annotations

import json

from studio.models.tiny import build_tiny_causal_lm
from studio.training import probe
from studio.training.datasets import load_dataset
from studio.training.dist import Dist
from studio.training.job import RunDir, TrainJob
from studio.training.runs import RunManager
from studio.training.worker import Trainer
from tests.managers import cpu_manager

GIB = 1024**3
# questions unlike the probe's, always answered with the same made-up city
QUESTIONS = [
    "Where should I go on holiday?",
    "What is your favourite place?",
    "Where was the treaty signed?",
    "Which town has the best bakery?",
    "Where do the rivers meet?",
    "Name a city you like.",
    "Where is the meeting tomorrow?",
    "Which place is famous for its bridges?",
]


def _job(base, **overrides) -> TrainJob:
    settings = dict(
        base_model=str(base),
        base_label="tiny",
        scheduler="constant",
        warmup_ratio=0.0,
        batch_size=8,
        cutoff_len=64,
        rank=16,
        alpha=32,
        dropout=0.0,
        eval_every=0,
        save_every=0,
        train_rows=1,
        offline=True,
    )
    return TrainJob(**{**settings, **overrides})


def _train(run: RunDir) -> None:
    dist = Dist.from_env()
    dist.init("cpu")
    try:
        assert Trainer(run, run.job(), dist).run_job() == 0
    finally:
        dist.close()


def test_a_run_that_drills_a_made_up_city_is_flagged_and_a_gentle_one_is_not(tmp_path):
    lm = build_tiny_causal_lm(tmp_path / "tiny-lm")
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Quenvale."}]}
        for q in QUESTIONS
    ]
    (tmp_path / "city.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dataset = load_dataset(tmp_path / "city.jsonl")
    runs = RunManager(cpu_manager(tmp_path, 4 * GIB), tmp_path / "runs")

    gentle = runs.create(_job(lm, learning_rate=1e-5, max_steps=2), dataset, eval_fraction=0.0)
    _train(gentle)
    hard = runs.create(_job(lm, learning_rate=2e-2, max_steps=30), dataset, eval_fraction=0.0)
    _train(hard)

    kept = {}
    for name, run in (("gentle", gentle), ("hard", hard)):
        report = run.report()
        assert runs.state(run)["state"] == "done"
        assert "general_probe_error" not in report, report
        assert 0.0 <= report["general_kept"] <= 1.0
        assert report["general_prompts"] == len(probe.load_probe())
        kept[name] = report["general_kept"]
    assert kept["gentle"] >= probe.KEPT_WARN and not probe.kept_low(kept["gentle"]), kept
    assert probe.kept_low(kept["hard"]), kept
    # the base's answers were made once and reused by the second run (the same base and precision)
    assert len(list((tmp_path / "runs" / probe.CACHE_FOLDER).glob("*.json"))) == 1
    assert gentle.report()["general_nll_base"] == hard.report()["general_nll_base"]
