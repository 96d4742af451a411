"""In Chromium, a GGUF vision model in the Chat tab: the tiny GGUF Llama with its projector beside it in the data
dir's models/ folder is offered as taking images, and an image dropped with a question is shown and answered
through llama.cpp."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from studio.engines import llamacpp
from studio.models.tiny_gguf_vision import build_tiny_gguf_vlm
from tests.ui.conftest import start_studio, stop_studio

pytestmark = [
    pytest.mark.ui,
    pytest.mark.skipif(
        not llamacpp.available(), reason=f"llama-cpp-python is missing ({llamacpp.unavailable_reason()})"
    ),
]


@pytest.fixture(scope="module")
def gstudio(tmp_path_factory):
    built = build_tiny_gguf_vlm(tmp_path_factory.mktemp("gguf-vlm-page"))
    data = tmp_path_factory.mktemp("gguf-vision-data")
    (data / "models").mkdir()
    for file in (built, built.parent / "mmproj-tiny-vlm.gguf"):
        shutil.copy(file, data / "models" / file.name)
    s = start_studio(data, "--device", "cpu", "--budget-gb", "2")
    yield s
    stop_studio(s)


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf-pictures") / "blue-square.png"
    Image.new("RGB", (64, 48), (30, 30, 200)).save(path)
    return path


def test_the_picker_marks_the_gguf_with_its_projector_and_an_image_is_answered(page, gstudio, picture):
    page.goto(gstudio.url)
    page.locator("#chat-model input").click()
    option = page.locator("ul[role=listbox] li", has_text="tiny-vlm.gguf (single file) · takes images")
    expect(option.first).to_be_visible(timeout=30_000)
    expect(page.locator("ul[role=listbox] li", has_text="mmproj-tiny-vlm.gguf")).to_have_count(0)
    option.first.click()
    plan = page.locator("#chat-plan")
    expect(plan).to_contain_text("llama.cpp", timeout=30_000)
    expect(plan).to_contain_text("vision projector mmproj-tiny-vlm.gguf")  # the plan counts the projector ...
    expect(plan).to_contain_text("an image costs 4 tokens of the context")  # ... and says what an image costs

    page.get_by_text("Sampling", exact=True).first.click()
    field = page.locator("#chat-max-new input[type=number]")
    field.fill("6")
    field.press("Tab")
    page.locator("#chat-images input[type=file]").set_input_files(str(picture))
    expect(page.locator("#chat-images")).to_contain_text(picture.stem)
    page.locator("#chat-input textarea").fill("What colour is this?")
    page.locator("#chat-send").click()

    expect(page.locator(f"#chat-history img[src*='{picture.name}']")).to_have_count(1)  # shown in the conversation
    expect(page.locator("#chat-history [data-testid=user]").last).to_contain_text("What colour is this?")
    expect(page.locator("#chat-stats")).to_contain_text("tokens", timeout=180_000)  # the reply's figures
    expect(page.locator("#chat-stats")).not_to_contain_text("text-only")
    expect(page.locator("#chat-history [data-testid=bot]")).to_have_count(1)
