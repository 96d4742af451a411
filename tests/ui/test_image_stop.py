"""In Chromium: Image Stop keeps the finished images and the partially denoised one; Stop is enabled only while a
run draws; a page reloaded mid-run shows the run's one progress line and its images when it ends."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.ui

PROGRESS = "#image-progress [data-testid=markdown]"  # the line (the element also holds Gradio's hidden tracker)
LINE = re.compile(r"^Image (\d) of (\d) · step (\d+) of (\d+)( · about \d+ (s|min) left)?$")


def settings(page, *, steps: int, seed: int, batch_count: int) -> None:
    page.get_by_role("tab", name="Image").click()
    expect(page.locator("#image-note")).to_contain_text("random weights")
    page.locator("#image-prompt textarea").fill("a lighthouse at dusk")
    for elem, value in (("#image-seed", seed), ("#image-batch-count", batch_count)):
        page.locator(f"{elem} input").fill(str(value))
        page.locator(f"{elem} input").press("Tab")
    page.locator("#image-steps input[type=number]").fill(str(steps))
    page.locator("#image-steps input[type=number]").press("Tab")


def test_stop_keeps_the_finished_image_and_the_partial_one_and_stop_is_on_only_while_drawing(page, studio):
    page.goto(studio.url)
    settings(page, steps=60, seed=6100, batch_count=3)  # each image outlasts the page's ~1 s progress poll
    stop = page.locator("#image-stop")
    expect(stop).to_be_disabled()
    page.get_by_role("tab", name="Speech").click()
    expect(page.locator("#speech-stop")).to_be_disabled()  # nothing is transcribing
    page.get_by_role("tab", name="Image").click()

    page.locator("#image-generate").click()
    expect(stop).to_be_enabled()
    progress = page.locator(PROGRESS)
    expect(progress).to_have_text(re.compile(r"Image 2 of 3 · step \d+ of 60"), timeout=300_000)  # one line
    assert LINE.match(progress.inner_text().strip()), progress.inner_text()
    stop.click()
    status = page.locator("#image-status")
    expect(status).to_contain_text(re.compile(r"stopped after [12] of 3"), timeout=120_000)
    expect(status).to_contain_text("1 partial image kept")
    finished = int(re.search(r"stopped after (\d)", status.inner_text()).group(1))  # 2 if Stop landed in image 3
    expect(stop).to_be_disabled()
    expect(progress).not_to_contain_text("Image")
    # the finished images and the partial one, in the gallery and on disk; nothing after it
    partial = f"-{6100 + finished}-partial.png"
    expect(page.locator("#image-gallery img[src*='-6100.png']").first).to_be_visible()
    expect(page.locator(f"#image-gallery img[src*='{partial}']").first).to_be_visible()
    day = studio.data_dir / "outputs" / "images"
    assert len(list(day.glob("*/*-610?.png"))) == finished and list(day.glob(f"*/*{partial}"))
    assert not list(day.glob(f"*/*-{6101 + finished}*.png"))
    page.locator(f"#image-gallery img[src*='{partial}']").first.click()
    expect(page.locator("#image-params textarea")).to_have_value(re.compile(r"Stopped at: step \d+ of 60$"))


def test_a_page_reloaded_mid_run_shows_its_progress_and_then_its_image(page, studio):
    page.goto(studio.url)
    settings(page, steps=150, seed=6200, batch_count=1)  # long enough to outlast the reload
    page.locator("#image-generate").click()
    progress = page.locator(PROGRESS)
    expect(progress).to_have_text(re.compile(r"Image 1 of 1 · step \d+ of 150"), timeout=120_000)
    page.reload()
    page.get_by_role("tab", name="Image").click()
    expect(page.locator("#image-note")).to_contain_text("random weights")
    # the run goes on, in view (a loaded machine takes a while to draw the reloaded page)
    expect(progress).to_have_text(re.compile(r"Image 1 of 1 · step \d+ of 150"), timeout=90_000)
    # when it ends the gallery shows its image, without Refresh gallery
    expect(page.locator("#image-gallery img[src*='-6200.png']").first).to_be_visible(timeout=600_000)
    expect(progress).not_to_contain_text("Image")
