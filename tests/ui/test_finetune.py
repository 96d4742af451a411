"""In Chromium: drop a dataset, see the preview, start, watch the loss plot update, stop, try the adapter in Chat."""

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


def _step(page) -> int:
    found = re.search(r"step (\d+) /", page.locator("#ft-progress").inner_text())
    return int(found.group(1)) if found else -1


def test_drop_preview_train_watch_stop_and_try_in_chat(page, studio, tiny_models):
    page.goto(studio.url)
    page.get_by_role("tab", name="Fine-tune").click()
    model = page.locator("#ft-model input")
    model.fill(str(tiny_models.causal_lm))
    model.press("Enter")
    for elem_id, value in (
        ("ft-max-steps", "100000"),
        ("ft-batch", "1"),
        ("ft-cutoff", "256"),
        ("ft-eval-every", "20"),
    ):
        _fill(page, elem_id, value)
    page.locator("#ft-file input[type=file]").set_input_files(str(ASSET))
    expect(page.locator("#ft-data-summary")).to_contain_text("30 rows", timeout=60_000)
    expect(page.locator("#ft-data-summary")).to_contain_text("instruction / response")
    expect(page.locator("#ft-preview")).to_contain_text("What does the model manager do?")
    expect(page.locator("#ft-preview mark").first).to_be_visible()  # the learned part is highlighted
    expect(page.locator("#ft-histogram svg")).to_be_visible()

    page.locator("#ft-start").click()
    expect(page.locator("#ft-progress")).to_contain_text("training", timeout=90_000)
    plot = page.locator("#ft-loss-plot")
    expect(plot.locator("canvas, svg").first).to_be_visible(timeout=30_000)
    first = _step(page)
    page.wait_for_function(
        "s => { const m = document.querySelector('#ft-progress').innerText.match(/step (\\d+) \\//);"
        " return m && Number(m[1]) >= s + 5; }",
        arg=first,
        timeout=60_000,
    )  # the page keeps polling: the steps (and the plot with them) move on

    page.locator("#ft-stop").click()
    expect(page.locator("#ft-progress")).to_contain_text("stopped", timeout=60_000)
    expect(page.locator("#ft-report")).to_contain_text("Adapter (PEFT)")
    run_name = page.locator("#ft-progress strong").first.inner_text()

    page.locator("#ft-try-chat").click()
    expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true", timeout=60_000)
    expect(page.locator("#chat-use-adapter input")).to_have_value(run_name)
    expect(page.locator("#chat-adapter-path input")).to_have_value(re.compile(re.escape(run_name) + r"/adapter$"))
    page.screenshot(path=str(studio.data_dir.parent / "finetune-tab.png"), full_page=True)


def test_a_broken_jsonl_line_is_named_and_the_page_keeps_working(page, studio, tmp_path, tiny_models):
    bad = tmp_path / "broken.jsonl"
    good = ASSET.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join([*good[:3], '{"instruction": "half a row', *good[3:]]) + "\n", encoding="utf-8")
    page.goto(studio.url)
    page.get_by_role("tab", name="Fine-tune").click()
    model = page.locator("#ft-model input")
    model.fill(str(tiny_models.causal_lm))
    model.press("Enter")
    page.locator("#ft-file input[type=file]").set_input_files(str(bad))
    expect(page.get_by_text("broken.jsonl: line 4 is not a JSON object").first).to_be_visible(timeout=60_000)
    page.locator("#ft-skip-bad input").check()  # analyses again by itself
    expect(page.locator("#ft-data-summary")).to_contain_text("30 rows", timeout=60_000)
    expect(page.locator("#ft-data-summary")).to_contain_text("1 bad rows skipped")
