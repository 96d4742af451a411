"""bench/dpo_trl.py's two sides — the studio's DPO run (the worker on a run folder) and a bare TRL DPOTrainer — train
the same thing on the tiny LM.

Same pairs, same data order and same settings: both sides must count the same tokens in the same steps (a side that
trained other pairs, another max_length or batch would count others), start from the same loss (log 2: the LoRA
update is zero before the first step, so policy and reference agree) and end at the same loss within tolerance.
Behaviour only, no timings.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math

import pytest

from studio.models.tiny import build_tiny_causal_lm


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("bench.dpo_trl")  # bench/ is a folder of scripts: a namespace package here


def _args(**over) -> argparse.Namespace:
    values = dict(steps=2, runs=1, batch=2, cutoff=64, beta=0.1, dpo_lr=1e-2, device="cpu", data=None, warmup=0)
    return argparse.Namespace(**{**values, **over})


def test_both_sides_train_the_same_pairs_from_the_same_loss(tmp_path, bench):
    model = build_tiny_causal_lm(tmp_path / "lm")
    found = bench.compare(model, _args())
    studio, bare = found["studio"][0], found["bare"][0]
    for side in (studio, bare):
        assert side.steps == 2 and side.pairs == 4, side
        assert len(side.losses) == 2 and all(math.isfinite(x) for x in side.losses), side
        assert side.tokens > 0 and side.seconds > 0, side
    assert studio.tokens == bare.tokens  # the same pairs, in the same order, cut at the same max_length
    assert studio.losses[0] == pytest.approx(math.log(2), abs=1e-3)
    assert bare.losses[0] == pytest.approx(studio.losses[0], abs=1e-3)
    assert bare.losses[1] == pytest.approx(studio.losses[1], rel=0.05, abs=1e-3)
    assert studio.losses[1] != pytest.approx(studio.losses[0], abs=1e-6)  # a real step changed the adapter
    assert bench.report(found) > 0


def test_pairs_from_a_file_reach_both_sides(tmp_path, bench):
    """--data: the pairs come from a JSONL of normalised rows ("meta" dropped), not the made-up ones."""
    model = build_tiny_causal_lm(tmp_path / "lm")
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Say a long word, number {i}."}],
            "chosen": [{"role": "assistant", "content": "Antidisestablishmentarianism, number " + str(i) * 20}],
            "rejected": [{"role": "assistant", "content": "No."}],
            "meta": {"source": "thumbs"},
        }
        for i in range(4)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_file = bench.compare(model, _args(steps=1, data=str(data)))
    made_up = bench.compare(model, _args(steps=1))
    assert from_file["studio"][0].tokens == from_file["bare"][0].tokens
    assert from_file["studio"][0].tokens != made_up["studio"][0].tokens
