"""In Chromium: type a prompt, generate with the test pipeline, see the image in the gallery; bad input is refused."""

from __future__ import annotations

import re

import httpx
import pytest
from PIL import Image, PngImagePlugin
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


def test_a_reload_shows_what_was_drawn_and_added_since_and_restore_switches_to_a_folder_model(page, studio):
    page.goto(studio.url)
    page.get_by_role("tab", name="Image").click()
    expect(page.locator("#image-note")).to_contain_text("random weights")
    # after the page was built: an image drawn through /v1, a diffusers folder copied into models/
    body = {"model": "tiny-sd", "prompt": "a red fox", "size": "64x64", "seed": 5151, "steps": 2}
    httpx.post(studio.url + "v1/images/generations", json=body, timeout=180).raise_for_status()
    folder = studio.data_dir / "models" / "my-sd"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    page.reload()
    page.get_by_role("tab", name="Image").click()
    expect(page.locator("#image-gallery img[src*='-5151.png']").first).to_be_visible()
    expect(page.locator("#image-model input")).to_have_value(re.compile(r"^Test pipeline"))  # the pick is kept
    page.locator("#image-gallery img[src*='-5151.png']").first.click()  # its own settings, read from its file
    expect(page.locator("#image-params textarea")).to_have_value(re.compile(r"Seed: 5151, Size: 64x64"))

    # a PNG drawn with that folder model: the picker switches to it and keeps the PNG's settings (the
    # switch fires the picker's change event, which must not put the model's defaults back)
    png = studio.data_dir.parent / "drawn-with-my-sd.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a fox\nSteps: 7, Sampler: Euler, CFG scale: 5, Seed: 9, Size: 64x64, Model: my-sd")
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    page.get_by_text("Restore settings from a PNG").click()
    page.locator("#image-restore input[type=file]").set_input_files(str(png))
    expect(page.locator("#image-restore-status")).to_contain_text("Switched the model to my-sd")
    expect(page.locator("#image-model input")).to_have_value("my-sd (folder)")
    expect(page.locator("#image-note")).to_contain_text("my-sd")  # the change event ran (the folder has no weights)
    expect(page.locator("#image-steps input[type=number]")).to_have_value("7")
    expect(page.locator("#image-width input")).to_have_value("64")
