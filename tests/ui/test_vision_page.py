"""In Chromium, vision in the page: an image dropped into the Chat tab is seen in the conversation and answered by the
tiny VLM, exported beside the Markdown; a text-only model and a file that is not an image get the engine's message
with the conversation kept; the Image tab's Describe writes the VLM's reply into the prompt, Ask in Chat hands the
image to the Chat tab."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from studio.models.tiny import ensure_tiny_vlm
from tests.ui.conftest import studio_with

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> Path:
    return ensure_tiny_vlm(tmp_path_factory.getbasetemp() / "tiny-models")


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pictures") / "red-square.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def vstudio(tmp_path_factory):
    """A studio with no model loaded: the VLM is loaded by the test that needs it (after Describe's message)."""
    with studio_with(tmp_path_factory.mktemp("vision-data")) as s:
        yield s


def _load(studio, kind: str, folder: Path) -> None:
    from gradio_client import Client

    result = Client(studio.url, verbose=False).predict(kind, str(folder), "fp32", api_name="/models_load")
    assert " loaded: " in result, result


def _set_model(page, folder: Path) -> None:
    box = page.locator("#chat-model input")
    box.fill(str(folder))
    box.press("Enter")


def _short_replies(page) -> None:
    page.get_by_text("Sampling", exact=True).first.click()
    field = page.locator("#chat-max-new input[type=number]")
    for _ in range(4):  # a field typed into while its accordion opens can be re-drawn with the old value
        field.fill("6")
        field.press("Tab")
        try:
            expect(field).to_have_value("6", timeout=3_000)
            return
        except AssertionError:
            page.wait_for_timeout(300)


def _attach(page, path: Path) -> None:
    page.locator("#chat-images input[type=file]").set_input_files(str(path))
    expect(page.locator("#chat-images")).to_contain_text(
        path.stem
    )  # uploaded before Send reads the box (the page splits the name)


def _send(page, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-send").click()


def _shown_images(page, name: str = ".png"):
    """Images drawn in the conversation (a message's images are their own bubbles, before its text)."""
    return page.locator(f"#chat-history img[src*='{name}']")


def _users(page):
    return page.locator("#chat-history [data-testid=user]")


def _bots(page):
    return page.locator("#chat-history [data-testid=bot]")


def test_describe_without_a_vision_model_says_to_load_one(page, vstudio, picture):
    page.goto(vstudio.url)
    page.get_by_role("tab", name="Image").click()
    page.locator("#image-describe-source input[type=file]").set_input_files(str(picture))
    page.locator("#image-describe").click()
    expect(page.get_by_text("No vision model is loaded").first).to_be_visible()
    expect(page.get_by_text("Models tab").first).to_be_visible()
    expect(page.locator("#image-prompt textarea")).to_have_value("")  # nothing written into the prompt


def test_an_image_in_chat_is_shown_answered_and_exported(page, vstudio, vlm, picture, tiny_models):
    _load(vstudio, "vision", vlm)
    page.goto(vstudio.url)
    _set_model(page, vlm)
    _short_replies(page)
    _attach(page, picture)
    _send(page, "What colour is this?")
    expect(_shown_images(page, picture.name)).to_have_count(1)  # the image is in the conversation
    expect(_shown_images(page, picture.name)).to_be_visible()
    page.screenshot(path=str(vstudio.data_dir.parent / "chat-image.png"), full_page=True)
    expect(_users(page).last).to_contain_text("What colour is this?")
    expect(page.locator("#chat-stats")).to_contain_text("tokens", timeout=120_000)  # the reply's figures
    expect(_bots(page)).to_have_count(1)
    expect(_bots(page).last).to_have_text(re.compile(r"\S"))
    expect(page.locator("#chat-images")).not_to_contain_text(picture.stem)  # the box is empty for the next one

    # Regenerate answers the same image again (a random seed each time: the figures line changes)
    first = page.locator("#chat-stats").inner_text()
    page.locator("#chat-regenerate").click()
    expect(page.locator("#chat-stats")).not_to_have_text(first, timeout=120_000)
    expect(page.locator("#chat-stats")).to_contain_text("tokens", timeout=120_000)
    expect(page.locator("#chat-stats")).not_to_contain_text("No reply")
    expect(_bots(page)).to_have_count(1)
    expect(_shown_images(page, picture.name)).to_have_count(1)

    page.locator("#chat-export").click()
    expect(page.locator("#chat-export-files")).to_contain_text(".md")
    md = sorted((vstudio.data_dir / "outputs" / "chats").glob("chat-*.md"))[-1]
    links = re.findall(r"!\[image\]\(([^)]+)\)", md.read_text(encoding="utf-8"))
    assert len(links) == 1
    copied = md.parent / links[0]
    assert copied.is_file() and Image.open(copied).size == (64, 48)

    # a file that is not an image: the engine's message on the stats line, the conversation kept
    notes = picture.parent / "notes.txt"
    notes.write_text("not a picture at all")
    _attach(page, notes)
    _send(page, "and this?")
    expect(page.locator("#chat-stats")).to_contain_text("is not an image the studio can read")
    expect(page.locator("#chat-history")).to_contain_text("and this?")  # the question stays, unanswered
    expect(_bots(page)).to_have_count(1)
    expect(_shown_images(page, picture.name)).to_have_count(1)

    # a text-only model: it says so and offers the loaded vision model, the image message stays
    page.locator("#chat-clear").click()
    expect(_users(page)).to_have_count(0)
    _load(vstudio, "chat", tiny_models.causal_lm)
    _set_model(page, tiny_models.causal_lm)
    _attach(page, picture)
    _send(page, "what is this?")
    expect(page.locator("#chat-stats")).to_contain_text("is a text-only model: it cannot see images")
    expect(page.get_by_text(f"Pick a vision model that is loaded: {vlm.name}").first).to_be_visible()
    expect(_shown_images(page, picture.name)).to_have_count(1)


def test_describe_fills_the_prompt_with_the_vlms_reply_and_ask_in_chat_hands_the_image_over(
    page, vstudio, vlm, picture
):
    from studio.engines.chat import ChatEngine
    from studio.models.specs import ModelSpec
    from studio.ui.image_describe import DESCRIBE_PARAMS, describe_messages, prompt_from_reply
    from tests.managers import cpu_manager

    _load(vstudio, "vision", vlm)  # loaded already by the chat test when it ran first; loading again is a no-op
    page.goto(vstudio.url)
    page.get_by_role("tab", name="Image").click()
    prompt = page.locator("#image-prompt textarea")
    prompt.fill("a lighthouse at dusk")
    page.locator("#image-describe-source input[type=file]").set_input_files(str(picture))
    page.locator("#image-describe").click()
    expect(page.locator("#image-status")).to_contain_text(f"Described by {vlm.name}", timeout=120_000)
    # the same question to the same model here (greedy, so the same reply): the prompt box holds that reply
    engine = ChatEngine(cpu_manager(vstudio.data_dir.parent / "here"))
    spec = ModelSpec("chat", str(vlm), "folder")  # as the picker makes it; the engine holds it as a vision model
    expected = prompt_from_reply(engine.complete(spec, describe_messages(picture.read_bytes()), DESCRIBE_PARAMS).text)
    assert expected
    expect(prompt).to_have_value(expected)
    prompt.fill(expected + ", oil painting")  # the user can edit it before Generate
    expect(prompt).to_have_value(expected + ", oil painting")

    page.locator("#image-ask-in-chat").click()
    expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#chat-images")).to_contain_text(".png")  # the image waits in the Chat tab's images box
    _set_model(page, vlm)
    _short_replies(page)
    _send(page, "What is this?")
    expect(_shown_images(page)).to_have_count(1)
    expect(page.locator("#chat-stats")).to_contain_text("tokens", timeout=120_000)


def test_an_image_pasted_into_the_message_box_joins_the_images(page, vstudio, picture):
    import base64

    page.goto(vstudio.url)
    box = page.locator("#chat-input textarea")
    box.click()
    data = base64.b64encode(picture.read_bytes()).decode()
    box.evaluate(
        """(el, data) => {
          const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
          const files = new DataTransfer();
          files.items.add(new File([bytes], "pasted.png", {type: "image/png"}));
          el.dispatchEvent(new ClipboardEvent("paste", {clipboardData: files, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    expect(page.locator("#chat-images")).to_contain_text("pasted")
    expect(box).to_have_value("")  # the image went to the images box, not as text into the message
