"""bench/sft_trl.py's two sides — the studio's SFT loop and TRL's SFTTrainer — train the same thing on the tiny LM.

With a batch that holds every packed block, one optimizer step is one epoch on both sides, so both must see the same
real tokens and the same learned (assistant) tokens every step, and start from the same loss (the LoRA update is zero
before the first step): a TRL side that learned the prompts too, padded, or let samples attend across the packing
would differ. Behaviour only, no timings.
"""

from __future__ import annotations

import argparse
import importlib
import math

import pytest

from studio.models.tiny import build_tiny_causal_lm
from studio.training.datasets import load_dataset


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("bench.sft_trl")  # bench/ is a folder of scripts: a namespace package here


def test_both_sides_train_the_same_tokens_with_finite_losses(tmp_path, bench):
    model = build_tiny_causal_lm(tmp_path / "lm")
    samples = load_dataset(bench.SAMPLE).samples
    args = argparse.Namespace(device="cpu", steps=2, batch=16, cutoff=256)
    job = bench.make_job(model, samples, args)
    studio = bench.one_side("studio", job, samples)
    trl = bench.one_side("trl", job, samples)

    for side in (studio, trl):
        assert len(side.tokens) == len(side.learned) == len(side.losses) == len(side.ends) == 2, side.name
        assert all(math.isfinite(x) and x > 0 for x in side.losses), (side.name, side.losses)
        assert all(0 < learned < tokens for learned, tokens in zip(side.learned, side.tokens, strict=True))
        assert side.ends[1] > side.ends[0] and side.rate > 0
        assert side.rss_peak >= side.rss_start > 0
    for s, t in zip(studio.tokens + studio.learned, trl.tokens + trl.learned, strict=True):
        assert abs(s - t) <= 0.02 * s, (studio.tokens, studio.learned, trl.tokens, trl.learned)
    assert studio.losses[0] == pytest.approx(trl.losses[0], rel=1e-3)


def test_trl_rows_keep_only_the_assistant_turns_learned(bench):
    single = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    rows, option = bench.trl_rows(single)
    assert option == "completion_only_loss"
    assert rows == [{"prompt": single[0]["messages"][:1], "completion": single[0]["messages"][1:]}]
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 2
    assert bench.trl_rows([{"messages": turns}]) == ([{"messages": turns}], "assistant_only_loss")
    assert bench.trl_rows([{"text": "t"}]) == ([{"text": "t"}], "text")
