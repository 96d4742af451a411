"""In Chromium: the Models table's headers stay on one line beside a long model key in a narrow window; the budget
field's hint says what the default is here (tests/integration/test_models_tab_figures.py checks the figure)."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.ui

# how many lines an element's text takes: the distinct tops of its text's line boxes
LINES = """e => {
  const walk = document.createTreeWalker(e, NodeFilter.SHOW_TEXT), tops = new Set();
  while (walk.nextNode()) {
    if (!walk.currentNode.textContent.trim()) continue;
    const r = document.createRange(); r.selectNodeContents(walk.currentNode);
    for (const box of r.getClientRects()) if (box.width > 0) tops.add(Math.round(box.top));
  }
  return tops.size;
}"""


def test_headers_stay_on_one_line_and_the_budget_field_shows_the_default(browser, studio):
    body = {"model": "tiny-sd", "prompt": "a red fox", "size": "64x64", "seed": 7, "steps": 1}
    httpx.post(studio.url + "v1/images/generations", json=body, timeout=300).raise_for_status()  # a long key
    context = browser.new_context(viewport={"width": 900, "height": 900})  # a narrow window squeezes the columns
    page = context.new_page()
    try:
        page.goto(studio.url)
        page.get_by_role("tab", name="Models").click()
        expect(page.locator("#models-table")).to_contain_text("@fp32/cpu")
        headers = page.locator("#models-table th")
        expect(headers.first).to_be_visible()
        for th in headers.all():
            name = th.inner_text().strip()
            if not name or not th.is_visible():  # Gradio's hidden sizing copy of the table
                continue
            lines = th.evaluate(LINES)
            assert lines == 1, f"header {name!r} is on {lines} lines"
        page.get_by_text("Budget", exact=True).first.click()
        field = page.locator("#budget-gb input")
        expect(field).to_have_value("2")  # --budget-gb 2, as configured
        expect(page.locator("#budget-accordion")).to_contain_text(re.compile(r"default [\d.]+ GB here \(12 GB capped"))
    finally:
        context.close()
