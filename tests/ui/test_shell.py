"""In Chromium: the page loads, the memory bar moves, the Models tab lists a loaded model and Unload removes it."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.ui


def bar_attr(page, name: str) -> str:
    return page.locator("#memory-bar .mem-bar").get_attribute(name)


def test_page_and_memory_bar_update(page, studio):
    page.goto(studio.url)
    expect(page.locator("#memory-bar .mem-bar")).to_be_visible()
    expect(page.locator("#memory-bar")).to_contain_text("CPU (host RAM)")
    expect(page.locator("#device-note")).to_contain_text("--device cpu")
    first_time, first_used = bar_attr(page, "data-time"), bar_attr(page, "data-used")
    ballast = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ballast.append(bytearray(32 * 1024 * 1024))  # host RAM use moves, so the bar's figure must move
        page.wait_for_timeout(700)
        if bar_attr(page, "data-time") != first_time and bar_attr(page, "data-used") != first_used:
            break
    assert bar_attr(page, "data-time") != first_time, "the bar did not refresh"
    assert bar_attr(page, "data-used") != first_used, "the bar's used figure never changed"
    assert page.locator("#tab-models, [role=tab]:has-text('Models')").count() >= 1


def _choose(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator("ul[role=listbox] li", has_text=text).first.click()


def test_models_tab_lists_a_loaded_model_and_unload_removes_it(page, studio, tiny_models):
    page.goto(studio.url)
    page.get_by_role("tab", name="Models").click()
    source = page.locator("#load-source input")
    source.fill(str(tiny_models.causal_lm))
    source.press("Enter")
    page.locator("#load-plan").click()
    expect(page.locator("#load-result")).to_contain_text("fits in the")
    page.locator("#load-go").click()
    expect(page.locator("#load-result")).to_contain_text("loaded:", timeout=90_000)
    name = tiny_models.causal_lm.name
    table = page.locator("#models-table")
    expect(table).to_contain_text(name)
    expect(table).to_contain_text("loaded")
    expect(page.locator("#memory-bar")).to_contain_text(name)  # the bar shows what the model holds
    _choose(page, "models-selected", name)
    page.locator("#models-unload").click()
    expect(page.locator("#models-status")).to_contain_text("unloaded")
    expect(table).to_contain_text("unloaded")
    expect(page.locator("#memory-bar")).to_contain_text("no model loaded")
    expect(page.locator("#memory-timeline svg")).to_have_attribute("data-events", "2")  # load + unload


def test_bad_input_shows_a_message_and_the_page_keeps_working(page, studio):
    page.goto(studio.url)
    page.get_by_role("tab", name="Models").click()
    source = page.locator("#load-source input")
    source.fill("/no/such/model")
    source.press("Enter")
    page.locator("#load-go").click()
    expect(page.get_by_text("no such file or folder").first).to_be_visible()
    page.reload()  # a fresh page: no earlier error toast stacked on top of the next one
    page.get_by_role("tab", name="Models").click()
    page.locator("#budget-accordion").get_by_text("Budget", exact=True).first.click()  # open the accordion
    page.locator("#budget-gb input").fill("-3")
    page.locator("#budget-gb input").press("Tab")  # commit the value before the click reads it
    page.locator("#budget-apply").click()
    expect(page.get_by_text("Budget must be more than 0 GB").first).to_be_visible()
    page.locator("#budget-gb input").fill("1.5")
    page.locator("#budget-gb input").press("Tab")
    page.locator("#budget-apply").click()
    expect(page.locator("#budget-result")).to_contain_text("Budget now 1.5 GB")
    expect(page.locator("#memory-bar")).to_contain_text("of budget 717 MB")  # 1.5 GB minus the 0.8 GB reserve
    page.screenshot(path=str(studio.data_dir.parent / "models-tab.png"), full_page=True)
    first = bar_attr(page, "data-time")
    page.wait_for_timeout(2500)
    assert bar_attr(page, "data-time") != first  # still serving
