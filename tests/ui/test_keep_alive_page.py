"""In Chromium: the Models tab shows each model's idle unload time (--keep-alive), sets it per model, and the studio
parks the model once it has been idle that long."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import start_studio, stop_studio

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def idle_studio(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("keep-alive-data"), "--device", "cpu", "--keep-alive", "5")
    yield s
    stop_studio(s)


def _choose(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator("ul[role=listbox] li", has_text=text).first.click()


def _set_idle(page, value: str) -> None:
    field = page.locator("#models-keep-alive input")
    field.fill(value)
    field.press("Tab")  # commit the value before the click reads it
    page.locator("#models-keep-alive-set").click()


def test_models_tab_shows_and_sets_the_idle_unload_time(page, idle_studio, tiny_models):
    page.goto(idle_studio.url)
    page.get_by_role("tab", name="Models").click()
    source = page.locator("#load-source input")
    source.fill(str(tiny_models.causal_lm))
    source.press("Enter")
    page.locator("#load-go").click()
    expect(page.locator("#load-result")).to_contain_text("loaded:", timeout=90_000)
    name = tiny_models.causal_lm.name
    table = page.locator("#models-table")
    expect(table).to_contain_text("Idle unload")
    expect(table).to_contain_text("5 min (default)")  # the --keep-alive the studio started with
    _choose(page, "models-selected", name)
    _set_idle(page, "-2")
    expect(page.get_by_text("Idle unload must be from 0 to 10080 minutes, not -2").first).to_be_visible()
    _set_idle(page, "0.5")
    expect(page.locator("#models-status")).to_contain_text(f"{name}: idle unload 30 s.")
    expect(table).to_contain_text("30 s")
    expect(table).not_to_contain_text("5 min (default)")
    _set_idle(page, "0.02")  # 1.2 s: the studio's timer parks it within a few seconds, and the table says so
    expect(table).to_contain_text("parked in RAM", timeout=60_000)
    expect(page.locator("#models-events")).to_contain_text("after 1.2 s idle")
