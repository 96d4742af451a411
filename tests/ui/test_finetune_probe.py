"""In Chromium: a finished run's report says how much general knowledge the adapter kept, and *Compare on general
questions* shows the base's and the adapter's answers to the probe's questions side by side."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.ui
ASSET = Path(__file__).resolve().parents[2] / "assets" / "datasets" / "studio-faq.jsonl"


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(value)
    box.press("Tab")


def test_a_finished_run_reports_general_knowledge_kept_and_compares_answers(page, studio, tiny_models):
    page.goto(studio.url)
    page.get_by_role("tab", name="Fine-tune").click()
    model = page.locator("#ft-model input")
    model.fill(str(tiny_models.causal_lm))
    model.press("Enter")
    for elem_id, value in (("ft-max-steps", "4"), ("ft-batch", "2"), ("ft-cutoff", "256"), ("ft-eval-every", "0")):
        _fill(page, elem_id, value)
    page.locator("#ft-file input[type=file]").set_input_files(str(ASSET))
    expect(page.locator("#ft-data-summary")).to_contain_text("30 rows", timeout=60_000)

    page.locator("#ft-start").click()
    expect(page.locator("#ft-progress")).to_contain_text("done", timeout=240_000)
    report = page.locator("#ft-report")
    expect(report).to_contain_text(re.compile(r"General knowledge kept: \d+ %"), timeout=30_000)

    page.locator("#ft-compare-general").click()
    table = page.locator("#ft-compare table")
    expect(table).to_be_visible(timeout=180_000)
    expect(table.locator("th")).to_have_text(["Question", "Base model", "With the adapter"])
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.first.locator("td").first).to_have_text("What is the capital of France?")
    for i in range(4):  # both models answered every question (a tiny random LM answers gibberish, never nothing)
        cells = rows.nth(i).locator("td")
        expect(cells.nth(1)).not_to_have_text("")
        expect(cells.nth(2)).not_to_have_text("")
