"""In Chromium, the rest of vision in chat: an image sent to a text-only model offers the loaded vision model, and one
click answers the same conversation with it; an image message survives a reload and reopens from Past chats, its
image shown and sent to the model again by Regenerate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from studio.models.tiny import ensure_tiny_vlm
from tests.ui.conftest import studio_with
from tests.ui.test_chat import _pick
from tests.ui.test_vision_page import _attach, _bots, _load, _send, _set_model, _short_replies, _shown_images, _users

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> Path:
    return ensure_tiny_vlm(tmp_path_factory.getbasetemp() / "tiny-models")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("kept-pictures")
    found = {}
    for name, colour in {"green-field": (30, 160, 40), "blue-sky": (40, 60, 200)}.items():
        found[name] = folder / f"{name}.png"
        Image.new("RGB", (64, 48), colour).save(found[name])
    return found


@pytest.fixture(scope="module")
def kstudio(tmp_path_factory, vlm, tiny_models):
    """A studio with the tiny VLM and a text-only LM loaded."""
    with studio_with(tmp_path_factory.mktemp("kept-data")) as s:
        _load(s, "vision", vlm)
        _load(s, "chat", tiny_models.causal_lm)
        yield s


def _answered(page) -> None:
    stats = page.locator("#chat-stats")
    expect(stats).to_contain_text("tokens", timeout=120_000)
    expect(stats).not_to_contain_text("No reply")


def _drawn(page, name: str) -> None:
    """The conversation shows the image, fetched from the studio (not a broken link)."""
    image = _shown_images(page, name)
    expect(image).to_have_count(1)
    expect(image).to_be_visible()
    page.wait_for_function("(img) => img.complete && img.naturalWidth === 64", arg=image.element_handle())


def test_an_image_sent_to_a_text_only_model_offers_the_vision_model_in_one_click(
    page, kstudio, vlm, pictures, tiny_models
):
    picture = pictures["green-field"]
    page.goto(kstudio.url)
    _set_model(page, tiny_models.causal_lm)  # a text-only model, loaded
    _short_replies(page)
    _attach(page, picture)
    _send(page, "What is in the picture?")
    expect(page.locator("#chat-stats")).to_contain_text("is a text-only model: it cannot see images")
    offer = page.locator("#chat-vision-offer")
    expect(offer).to_be_visible()
    expect(offer).to_contain_text(f"loaded: {vlm.name}")  # the loaded vision model, named
    expect(offer).to_contain_text("Qwen2.5-VL 3B Instruct")  # and the recommended ones, for the owner
    page.screenshot(path=str(kstudio.data_dir.parent / "vision-offer.png"), full_page=True)
    expect(_bots(page)).to_have_count(0)  # refused: no reply yet
    use = page.locator("#chat-vision-use")
    expect(use).to_have_text(f"Use {vlm.name}")

    use.click()  # one click: the vision model is picked and answers the same conversation
    _answered(page)
    expect(page.locator("#chat-model input")).to_have_value(re.compile(rf"^{vlm.name} \(loaded\)"))
    expect(_bots(page)).to_have_count(1)
    expect(_bots(page).last).to_have_text(re.compile(r"\S"))
    expect(_users(page).last).to_contain_text("What is in the picture?")
    _drawn(
        page, picture.name
    )  # the image is still in the conversation (and went to the model: a text-only one refuses)
    expect(offer).to_be_hidden()


def test_an_image_message_survives_a_reload_and_reopens_from_past_chats(page, kstudio, vlm, pictures, tiny_models):
    picture = pictures["blue-sky"]
    page.goto(kstudio.url)
    _set_model(page, vlm)
    _short_replies(page)
    _attach(page, picture)
    _send(page, "Which colour is the sky here?")
    _answered(page)
    kept = sorted((kstudio.data_dir / "outputs" / "chat-images").glob(f"*-{picture.name}"))
    assert len(kept) == 1 and kept[0].read_bytes() == picture.read_bytes()  # kept on the server

    page.reload()  # the open conversation comes back from the browser, its image with it
    expect(_users(page).last).to_contain_text("Which colour is the sky here?")
    expect(_bots(page)).to_have_count(1)
    _drawn(page, picture.name)

    page.locator("#chat-new").click()
    expect(_users(page)).to_have_count(0)
    expect(_shown_images(page)).to_have_count(0)
    _pick(page, "chat-past", "Which colour is the sky here?")  # reopened: the image shown again
    expect(_users(page).last).to_contain_text("Which colour is the sky here?")
    _drawn(page, picture.name)

    page.locator("#chat-regenerate").click()  # the vision model answers the reopened image again
    expect(page.locator("#chat-stats")).to_contain_text("tokens", timeout=120_000)
    expect(page.locator("#chat-stats")).not_to_contain_text("No reply")
    expect(_bots(page)).to_have_count(1)
    _drawn(page, picture.name)

    # the reopened conversation really carries its image: a text-only model refuses it and offers the vision model
    _set_model(page, tiny_models.causal_lm)
    page.locator("#chat-regenerate").click()
    expect(page.locator("#chat-stats")).to_contain_text("is a text-only model: it cannot see images", timeout=60_000)
    expect(page.locator("#chat-vision-offer")).to_contain_text(f"loaded: {vlm.name}")
    _drawn(page, picture.name)
