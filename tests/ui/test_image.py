"""In Chromium: type a prompt, generate with the test pipeline, see the image in the gallery; bad input is refused."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.ui


def test_prompt_generate_and_the_image_is_in_the_gallery(page, studio):
    page.goto(studio.url)
    page.get_by_role("tab", name="Image").click()
    expect(page.locator("#image-note")).to_contain_text("random weights")
    page.locator("#image-prompt textarea").fill("a lighthouse at dusk")
    page.locator("#image-seed input").fill("4242")
    page.locator("#image-seed input").press("Tab")
    page.locator("#image-generate").click()
    expect(page.locator("#image-status")).to_contain_text("1 image", timeout=90_000)
    expect(page.locator("#image-status")).to_contain_text("seed 4242")
    expect(page.locator("#image-gallery img").first).to_be_visible()
    assert list((studio.data_dir / "outputs" / "images").glob("*/*-4242.png"))

    # a width that is not a multiple of 8: a specific message, the image stays in the gallery
    page.locator("#image-width input").fill("100")
    page.locator("#image-width input").press("Tab")
    page.locator("#image-generate").click()
    expect(page.get_by_text("Width must be a multiple of 8, not 100").first).to_be_visible()
    expect(page.locator("#image-status")).to_contain_text("seed 4242")  # the status and the gallery are untouched
    expect(page.locator("#image-gallery img").first).to_be_visible()
    page.screenshot(path=str(studio.data_dir.parent / "image-tab.png"), full_page=True)
