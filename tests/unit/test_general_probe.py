"""The general probe's file, its score mapping and what the Fine-tune report says of it."""

from __future__ import annotations

import json
import math

import pytest

from studio.errors import StudioError
from studio.training import probe
from studio.ui.finetune_views import compare_markdown, general_lines


def test_the_shipped_probe_parses_and_has_the_required_shape():
    lines = [json.loads(line) for line in probe.PROBE_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = probe.load_probe()
    assert 30 <= len(prompts) <= 40 and len(set(prompts)) == len(prompts)
    assert all(isinstance(r["prompt"], str) and 0 < len(r["prompt"]) <= 120 for r in lines)
    assert {r["topic"] for r in lines} == {"capitals", "arithmetic", "facts", "instructions"}
    assert "What is the capital of France?" in prompts


def test_a_bad_probe_line_is_named(tmp_path):
    bad = tmp_path / "probe.jsonl"
    bad.write_text('{"prompt": "What is 2 + 2?"}\n{"question": "no prompt"}\n', encoding="utf-8")
    with pytest.raises(StudioError, match="line 2 has no 'prompt'"):
        probe.load_probe(bad)


def test_kept_is_exp_of_minus_the_extra_loss_clipped_to_0_1():
    assert probe.kept_score(1.0, 1.0) == 1.0
    assert probe.kept_score(1.0, 0.5) == 1.0  # better than the base on its own answers: capped at 1
    assert probe.kept_score(1.0, 1.1) == pytest.approx(math.exp(-0.1))
    assert probe.kept_score(0.2, 500.0) == 0.0 or probe.kept_score(0.2, 500.0) < 1e-20
    assert not probe.kept_low(math.exp(-0.05)) and probe.kept_low(math.exp(-0.2)) and not probe.kept_low(None)


def test_the_report_shows_the_kept_line_and_warns_only_when_it_drops():
    good = general_lines({"general_kept": 0.97, "general_prompts": 36})
    assert any("General knowledge kept: **97 %**" in line for line in good)
    assert not any("Warning" in line for line in good)
    low = general_lines({"general_kept": 0.42, "general_prompts": 36})
    assert any("**42 %**" in line for line in low) and any("Warning" in line for line in low)
    failed = general_lines({"general_kept": None, "general_probe_error": "RuntimeError: boom"})
    assert failed[-1] == "General knowledge kept: not measured (RuntimeError: boom)."
    assert general_lines({"steps": 3}) == []  # a report from before the probe existed


def test_the_side_by_side_table_keeps_one_line_per_question():
    table = compare_markdown([("What is 2 + 2?", "4", "Quenvale |\nQuenvale"), ("Hi?", "", "x")])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2] == "| What is 2 + 2? | 4 | Quenvale \\| Quenvale |"
    assert lines[3] == "| Hi? | — | x |"
