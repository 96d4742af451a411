"""In Chromium: dropping the bundled sample fills the settings chosen from it and shows the run's step count live."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from studio.models.starter import starter_folder as folder_in
from tests.ui.conftest import start_studio, stop_studio

pytestmark = pytest.mark.ui
ASSET = Path(__file__).resolve().parents[2] / "assets" / "datasets" / "studio-faq.jsonl"


@pytest.fixture(scope="module")
def starter_studio(tmp_path_factory, starter_folder):
    """A studio whose starter is the converted one the tests share (no conversion in the page)."""
    data = tmp_path_factory.mktemp("defaults-data")
    target = folder_in(data / "models")
    target.parent.mkdir(parents=True)
    target.symlink_to(starter_folder, target_is_directory=True)
    s = start_studio(data, "--device", "cpu", "--budget-gb", "4", "--offline")
    yield s
    stop_studio(s)


def _value(page, elem_id: str):
    return page.locator(f"#{elem_id} input").first


def test_the_sample_fills_the_chosen_settings_and_the_steps_line(page, starter_studio):
    page.goto(starter_studio.url)
    page.get_by_role("tab", name="Fine-tune").click()
    expect(_value(page, "ft-cutoff")).to_have_value("1024")  # the page's defaults before a dataset
    page.locator("#ft-file input[type=file]").set_input_files(str(ASSET))
    expect(page.locator("#ft-data-summary")).to_contain_text("30 rows", timeout=120_000)
    expect(_value(page, "ft-cutoff")).to_have_value("128", timeout=60_000)  # rows of at most 108 tokens
    expect(_value(page, "ft-batch")).to_have_value("1")
    derived = page.locator("#ft-derived")
    expect(derived).to_contain_text("Chosen from the data")
    expect(derived).to_contain_text("cutoff 128")
    expect(derived).to_contain_text("batch 1")
    steps = page.locator("#ft-steps")
    expect(steps).to_contain_text(re.compile(r"This run will make \d+ optimizer steps over [\d,]+ tokens"))
    shown = int(re.search(r"make (\d+) optimizer", steps.inner_text()).group(1))
    assert shown >= 20
    expect(steps).not_to_contain_text("Fewer than")

    # live: fewer steps than 20 warns; the estimate follows the chosen settings (a few hundred MB, not 11 GB)
    box = _value(page, "ft-max-steps")
    box.fill("8")
    box.press("Tab")
    expect(steps).to_contain_text("This run will make 8 optimizer steps")
    expect(steps).to_contain_text("Fewer than 20 steps")
    page.locator("#ft-estimate-btn").click()
    expect(page.locator("#ft-estimate")).to_contain_text("Memory:", timeout=60_000)
    total = re.search(r"= ([\d.]+) (MB|GB)", page.locator("#ft-estimate").inner_text())
    assert total and (total.group(2) == "MB" or float(total.group(1)) < 1), total
