"""In Chromium, the loop no peer closes: votes cast on side-by-side answers in the Chat tab show up with their count
in the Fine-tune tab, a DPO run started on them trains to the end with its preference figures, and its adapter
answers in Chat."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.ui.test_chat import _bots, _open_sampling, _send, _set_model, _set_value
from tests.ui.test_finetune import _fill

pytestmark = pytest.mark.ui
QUESTIONS = ("hello", "tell me a joke", "what is a cat?")


def test_votes_in_chat_feed_a_dpo_run_in_the_fine_tune_tab(page, studio, tiny_models):
    page.goto(studio.url)
    _set_model(page, str(tiny_models.causal_lm))
    _open_sampling(page)
    _set_value(page, "chat-max-new", "8")
    _set_value(page, "chat-temperature", "1")
    page.locator("#chat-side-by-side input").check()  # no adapter: two samples of one model
    expect(page.locator("#chat-side")).to_be_visible()
    for n, question in enumerate(QUESTIONS, start=1):
        _send(page, question)
        expect(_bots(page, "#chat-side")).to_have_count(n, timeout=90_000)
        expect(page.locator("#chat-stats")).to_contain_text("second sample", timeout=90_000)
        expect(page.locator("#chat-stats")).not_to_contain_text("waiting", timeout=90_000)
        page.locator("#chat-vote-left" if n % 2 else "#chat-vote-right").click()
        saved = f"Saved: chat-votes.jsonl now has {n} pair{'s' if n > 1 else ''}."
        expect(page.locator("#chat-vote-status")).to_have_text(saved, timeout=30_000)
    votes = studio.data_dir / "preferences" / "chat-votes.jsonl"
    rows = [json.loads(line) for line in votes.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"][-1]["content"] for r in rows] == list(QUESTIONS)

    page.get_by_role("tab", name="Fine-tune").click()
    model = page.locator("#ft-model input")
    model.fill(str(tiny_models.causal_lm))
    model.press("Enter")
    page.locator("#ft-objective").get_by_text("DPO", exact=True).click()
    expect(page.locator("#ft-loss-type")).to_be_visible(timeout=30_000)
    page.locator("#ft-votes input").click()
    option = page.locator("ul[role=listbox] li", has_text="chat-votes.jsonl — 3 pairs")
    expect(option).to_be_visible(timeout=30_000)  # the votes just cast, counted
    option.first.click()
    summary = page.locator("#ft-data-summary")
    expect(summary).to_contain_text("3 rows, preference pairs", timeout=90_000)
    expect(summary).not_to_contain_text("⚠")
    # the settings chosen from the data come first; ours then replace them
    expect(page.locator("#ft-derived")).to_contain_text("Chosen from the data", timeout=60_000)
    for elem_id, value in (("ft-max-steps", "4"), ("ft-batch", "1"), ("ft-eval-every", "0")):
        _fill(page, elem_id, value)
        expect(page.locator(f"#{elem_id} input").first).to_have_value(value)
    page.locator("#ft-start").click()
    progress = page.locator("#ft-progress")
    expect(progress).to_contain_text(re.compile("training|done"), timeout=120_000)
    expect(progress).to_contain_text("done", timeout=300_000)
    expect(page.locator("#ft-report")).to_contain_text("Adapter (PEFT)")
    run_name = progress.locator("strong").first.inner_text()
    run = studio.data_dir / "runs" / run_name
    job = json.loads((run / "job.json").read_text(encoding="utf-8"))
    assert job["objective"] == "dpo"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any("rewards/accuracies" in m for m in metrics), metrics[:3]
    assert json.loads((run / "report.json").read_text(encoding="utf-8"))["steps"] == 4

    # the preference adapter answers in Chat like any other
    page.locator("#ft-try-chat").click()
    expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true", timeout=60_000)
    expect(page.locator("#chat-use-adapter input")).to_have_value(run_name)
    page.locator("#chat-side-by-side input").uncheck()
    _send(page, "hello again")
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=90_000)
    expect(_bots(page).last).not_to_be_empty()
