"""In Chromium: choose a model, send a message, watch the reply stream in, stop a long reply."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.ui


def _set_model(page, folder: str) -> None:
    box = page.locator("#chat-model input")
    box.fill(folder)
    box.press("Enter")


def _open_sampling(page) -> None:
    page.get_by_text("Sampling", exact=True).first.click()
    expect(page.locator("#chat-temperature input[type=range]")).to_be_visible()


def _set_value(page, elem_id: str, value: str) -> None:
    """Type a number into a slider's or a number box's field until the page's state holds it. A field typed into
    while its accordion is still opening can be re-drawn with the old value (seen on a loaded CI machine)."""
    field = page.locator(f"#{elem_id} input[type=number]")
    state = page.locator(f"#{elem_id} input[type=range]")
    check = state if state.count() else field
    for _ in range(4):
        field.fill(value)
        field.press("Tab")
        try:
            expect(check).to_have_value(value, timeout=3_000)
            return
        except AssertionError:
            page.wait_for_timeout(300)
    expect(check).to_have_value(value)


@pytest.fixture(scope="module")
def long_lm(tmp_path_factory):
    """A tiny LM with a long context, so a reply can run long enough to be stopped by hand."""
    from studio.models.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("long") / "long-lm", max_position_embeddings=32768)


def test_chat_streams_and_stops(page, studio, tiny_models, long_lm):
    page.goto(studio.url)
    expect(page.get_by_role("tab", name="Chat")).to_be_visible()
    _set_model(page, str(tiny_models.causal_lm))
    expect(page.locator("#chat-plan")).to_contain_text("Loading")
    _open_sampling(page)
    _set_value(page, "chat-max-new", "8")
    page.locator("#chat-input textarea").fill("hello there")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=60_000)
    expect(page.locator("#chat-history")).to_contain_text("hello there")
    bubbles = page.locator("#chat-history .message-wrap .bot, #chat-history [data-testid=bot]")
    assert bubbles.count() >= 1

    # a long reply, stopped while it streams: the partial reply stays
    _set_model(page, str(long_lm))
    _set_value(page, "chat-temperature", "0")  # greedy: this tiny LM never emits EOS then
    _set_value(page, "chat-max-new", "30000")
    _set_value(page, "chat-context", "32768")
    page.locator("#chat-input textarea").fill("tell me a long story")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-stats")).not_to_contain_text("tok/s", timeout=30_000)
    page.wait_for_timeout(1500)
    page.locator("#chat-stop").click()
    expect(page.locator("#chat-stats")).to_contain_text("stopped", timeout=30_000)
    expect(page.locator("#chat-history")).to_contain_text("tell me a long story")
    page.screenshot(path=str(studio.data_dir.parent / "chat-tab.png"), full_page=True)


def test_empty_message_is_refused_and_the_conversation_kept(page, studio, tiny_models):
    page.goto(studio.url)
    _set_model(page, str(tiny_models.causal_lm))
    page.locator("#chat-input textarea").fill("   ")
    page.locator("#chat-send").click()
    expect(page.get_by_text("the message is empty").first).to_be_visible()


@pytest.fixture(scope="module")
def starter_studio(tmp_path_factory, starter_folder):
    """A studio whose data dir already holds the converted starter model (linked from the test cache)."""
    from studio.models.starter import starter_folder as folder_in
    from tests.ui.conftest import start_studio, stop_studio

    data = tmp_path_factory.mktemp("starter-data")
    target = folder_in(data / "models")
    target.parent.mkdir(parents=True)
    target.symlink_to(starter_folder, target_is_directory=True)
    s = start_studio(data, "--device", "cpu")
    yield s
    stop_studio(s)


def test_the_starter_model_answers_in_the_page(page, starter_studio):
    page.goto(starter_studio.url)
    page.locator("#chat-model input").click()
    page.locator("ul[role=listbox] li", has_text="SmolLM2 135M Instruct (starter)").first.click()
    _open_sampling(page)
    _set_value(page, "chat-temperature", "0")
    _set_value(page, "chat-max-new", "24")
    page.locator("#chat-input textarea").fill("What is the capital of France?")
    page.locator("#chat-input textarea").press("Enter")
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=120_000)
    expect(page.locator("#chat-history")).to_contain_text("Paris")
